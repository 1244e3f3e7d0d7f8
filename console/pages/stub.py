"""A page whose issue is not done yet: it says plainly what will be there and where it is tracked."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlannedPage:
    """A page to come: its navigation name, what it will show and the tracking issues."""

    name: str
    purpose: str
    issues: tuple[int, ...]

    @property
    def headline(self) -> str:
        """E.g. ``"Service flow — per-stage latency and the 3 s SLO."``."""
        return f"{self.name} — {self.purpose}"

    @property
    def status_line(self) -> str:
        """E.g. ``"Not built yet: tracked in issue #4."``."""
        issues = " and ".join(f"#{n}" for n in self.issues)
        noun = "issue" if len(self.issues) == 1 else "issues"
        return f"Not built yet: tracked in {noun} {issues}."


#: The pages after Fleet, in navigation order.
PLANNED_PAGES: tuple[PlannedPage, ...] = (
)


class StubPage(QWidget):
    """The placeholder of a :class:`PlannedPage`."""

    def __init__(self, page: PlannedPage, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.page = page
        title = QLabel(page.name)
        title.setObjectName("pageTitle")
        self.headline = QLabel(page.headline)
        self.headline.setObjectName("stubHeadline")
        self.headline.setWordWrap(True)
        self.body = QLabel(page.status_line)
        self.body.setObjectName("stubBody")
        self.body.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(16, 12, 16, 12)
        layout.addWidget(title)
        layout.addSpacing(40)
        for label in (self.headline, self.body):
            label.setAlignment(Qt.AlignmentFlag.AlignHCenter)
            layout.addWidget(label)
        layout.addStretch(1)

    def text(self) -> str:
        """Everything the page says, for tests and screen readers."""
        return f"{self.headline.text()} {self.body.text()}"
