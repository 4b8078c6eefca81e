from malpi.cli import main

raise SystemExit(main())
