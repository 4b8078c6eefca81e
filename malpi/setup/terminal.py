"""How the set-up talks to the person at the car: questions, and arrow keys in raw mode.

Three kinds: :class:`Console` (a real terminal), :class:`Defaults` (``--yes``:
every question answered with its default, every adjustment kept as it is, so
the same steps run from flags) and :class:`Scripted` (tests: given answers and
keys). A terminal that goes away mid-question is :class:`TerminalLost`.
"""

from __future__ import annotations

import os
import select
import sys

from malpi.setup.outputs import TerminalLost

ARROWS = {b"\x1b[A": "up", b"\x1b[B": "down", b"\x1b[C": "right", b"\x1b[D": "left"}


class Terminal:
    """The questions the set-up asks. Subclasses implement :meth:`line` and :meth:`key`."""

    def say(self, text: str = "") -> None:
        print(text, flush=True)

    def line(self, prompt: str) -> str:
        raise NotImplementedError

    def key(self) -> str:
        """One key: up, down, left, right, enter, quit, or the character typed."""
        raise NotImplementedError

    def ask(self, question: str, default: str) -> str:
        answer = self.line(f"{question} [{default}]: ").strip()
        return answer or default

    def choose(self, question: str, options: dict[str, str], default: str) -> str:
        """One of ``options`` (key -> what it means), asked until the answer is one of them."""
        if set(options) != {"y", "n"}:
            self.say(question)
            for key, meaning in options.items():
                self.say(f"  {key:<14} {meaning}")
            question = "  your choice"
        else:
            question += " (" + "/".join(options) + ")"
        while True:
            answer = self.ask(question, default).lower()
            if answer in options:
                return answer
            self.say(f"  please answer one of: {', '.join(options)}")

    def confirm(self, question: str, default: bool = True) -> bool:
        return self.choose(question, {"y": "yes", "n": "no"}, "y" if default else "n") == "y"


class Console(Terminal):
    def line(self, prompt: str) -> str:
        try:
            return input(prompt)
        except EOFError:
            raise TerminalLost("the terminal closed (end of input)") from None

    def key(self) -> str:
        import termios
        import tty

        fd = sys.stdin.fileno()
        try:
            saved = termios.tcgetattr(fd)
        except termios.error:  # not a terminal: take a line's first word instead
            word = self.line("(up/down/left/right/enter/quit) ").strip().lower()
            return word or "enter"
        try:
            tty.setcbreak(fd)
            data = os.read(fd, 1)
            if data == b"\x1b":  # an escape sequence follows at once, or it was Esc itself
                while select.select([fd], [], [], 0.05)[0]:
                    data += os.read(fd, 1)
                    if len(data) >= 3:
                        break
        finally:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        if not data:
            raise TerminalLost("the terminal closed")
        if data in ARROWS:
            return ARROWS[data]
        if data in (b"\r", b"\n"):
            return "enter"
        if data in (b"\x1b", b"q", b"Q"):
            return "quit"
        return data.decode(errors="replace")


class Defaults(Terminal):
    """``--yes``: no questions; the flags (as defaults) decide, adjustments keep their value."""

    def line(self, prompt: str) -> str:
        self.say(prompt + "(default)")
        return ""

    def key(self) -> str:
        return "enter"


class Scripted(Terminal):
    """Answers and keys given in advance (tests); what was said is kept in ``said``."""

    def __init__(self, answers: list[str] | None = None, keys: list[str] | None = None) -> None:
        self.answers, self.keys = list(answers or []), list(keys or [])
        self.said: list[str] = []

    def say(self, text: str = "") -> None:
        self.said.append(text)

    def line(self, prompt: str) -> str:
        self.said.append(prompt)
        if not self.answers:
            raise TerminalLost("no more scripted answers")
        return self.answers.pop(0)

    def key(self) -> str:
        if not self.keys:
            raise TerminalLost("no more scripted keys")
        return self.keys.pop(0)
