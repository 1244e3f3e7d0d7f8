"""The console's error reporter.

Two kinds of failure (after napari's notifications and Orange's message bars):

* **expected** — the database is locked or unreachable, a unit does not answer, a file is
  malformed (OS errors, SQLAlchemy connection errors, the core's typed errors). They are shown
  inside the panel that caused them (a :class:`console.widgets.MessageBar`) saying what went
  wrong and what to do; the console goes on.
* **bugs** — anything else. They get a dialog with the traceback and a *Copy details* button.

:func:`install_excepthooks` routes uncaught exceptions (GUI thread and other threads) to the
reporter. It imports pyqtgraph first, because pyqtgraph replaces ``sys.excepthook`` on import.
"""

from __future__ import annotations

import html
import logging
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal, Slot
from PySide6.QtGui import QFontDatabase, QGuiApplication, QIcon
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from console.jobs import in_gui_thread

logger = logging.getLogger(__name__)

#: Top-level packages whose ``*.errors`` modules hold the core's typed, expected errors.
_CORE_PACKAGES = ("fleet", "inference_core", "feedback", "speakerops")


def is_expected(exc: BaseException) -> bool:
    """True if ``exc`` is a failure the operator can act on rather than a bug.

    Expected: ``OSError`` (incl. ``ConnectionError``, ``TimeoutError``), a read process that
    ended (``console.read_process.ReadProcessError``), SQLAlchemy's
    ``OperationalError`` / ``InterfaceError`` / pool ``TimeoutError``, and the typed errors of
    the core packages (classes defined in ``fleet.errors``, ``inference_core.errors``, ...).
    """
    if isinstance(exc, OSError):
        return True
    from console.read_process import ReadProcessError

    if isinstance(exc, ReadProcessError):  # a read process ended; the next read starts a new one
        return True
    try:
        from sqlalchemy import exc as sa_exc

        if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError)):
            return True
        from speakerops.roles import is_refusal

        if isinstance(exc, sa_exc.DBAPIError) and is_refusal(exc):
            return True  # the login's role may not do this (speakerops.roles)
    except ImportError:  # pragma: no cover - SQLAlchemy is a dependency
        pass
    for klass in type(exc).__mro__:
        parts = klass.__module__.split(".")
        if parts[0] in _CORE_PACKAGES and parts[-1] == "errors":
            return True
    return False


def describe(exc: BaseException) -> str:
    """One line for the operator: what went wrong (the driver's own message for database
    errors, without SQLAlchemy's boilerplate)."""
    from speakerops.roles import is_refusal, refusal_message

    if is_refusal(exc):
        return refusal_message(exc)
    orig = getattr(exc, "orig", None)
    text = str(orig) if orig is not None else str(exc)
    text = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return text


@dataclass(frozen=True)
class ErrorRecord:
    """One reported failure.

    ``details`` is the formatted traceback (empty if there was none).
    """

    title: str
    message: str
    details: str
    expected: bool
    exc_type: str
    when: datetime = field(default_factory=lambda: datetime.now(UTC))


def _format_tb(exc: BaseException, tb: TracebackType | None = None) -> str:
    return "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))


class ErrorDialog(QDialog):
    """A bug report: what happened, the traceback in a read-only box, *Copy details*."""

    def __init__(self, record: ErrorRecord, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.record = record
        self.setWindowTitle(record.title)
        self.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.resize(760, 460)
        intro = QLabel(
            f"<b>{html.escape(record.title)}</b><br>{html.escape(record.message)}<br><br>"
            + ("This looks like a bug in SpeakerOps. Copy the details below into a ticket."
               if not record.expected else "What to do: see the message above."))
        intro.setWordWrap(True)
        intro.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.details = QPlainTextEdit(record.details or record.message)
        self.details.setReadOnly(True)
        self.details.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.button(QDialogButtonBox.StandardButton.Close).setIcon(QIcon())
        self.copy_button = QPushButton("Copy details")
        buttons.addButton(self.copy_button, QDialogButtonBox.ButtonRole.ActionRole)
        self.copy_button.clicked.connect(self._on_copy_button_clicked)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addWidget(self.details, 1)
        layout.addWidget(buttons)

    def _on_copy_button_clicked(self) -> None:
        QGuiApplication.clipboard().setText(self.details.toPlainText())
        self.copy_button.setText("Copied")


class ErrorReporter(QObject):
    """Receives every failure the console does not handle itself.

    Parameters
    ----------
    parent_widget
        Parent of the dialogs (the main window); may be set later with :meth:`set_parent_widget`.
    show_dialogs
        Open dialogs (False in tests that only check :attr:`history`).

    Attributes
    ----------
    history : list of ErrorRecord
        Everything reported, oldest first.
    """

    sig_reported = Signal(object)  # ErrorRecord
    _sig_from_thread = Signal(object, object, object, str)  # exc, tb, panel, context

    def __init__(self, parent_widget: QWidget | None = None, *, show_dialogs: bool = True) -> None:
        super().__init__()
        self._parent_widget = parent_widget
        self.show_dialogs = show_dialogs
        self.history: list[ErrorRecord] = []
        self.dialogs: list[ErrorDialog] = []
        self._sig_from_thread.connect(self._on_self_thread_report, Qt.ConnectionType.QueuedConnection)

    def set_parent_widget(self, widget: QWidget | None) -> None:
        """Parent future dialogs to ``widget``."""
        self._parent_widget = widget

    def report(self, exc: BaseException, *, context: str = "", panel: Any = None,
               tb: TracebackType | None = None) -> ErrorRecord | None:
        """Report ``exc``; safe to call from any thread (off the GUI thread it is queued).

        Parameters
        ----------
        exc
            The failure.
        context
            What was being done, e.g. ``"load the fleet table"``.
        panel
            A :class:`console.widgets.MessageBar` (anything with ``show_message(str)``) of the
            panel that caused it; expected failures are shown there instead of in a dialog.
        tb
            Traceback, if not ``exc.__traceback__``.

        Returns
        -------
        ErrorRecord or None
            The record (None when queued from another thread).
        """
        if not in_gui_thread():
            self._sig_from_thread.emit(exc, tb, panel, context)
            return None
        expected = is_expected(exc)
        message = describe(exc)
        title = f"Could not {context}" if context else (
            "A problem the console could not handle" if not expected else "Something failed")
        record = ErrorRecord(title=title, message=message, details=_format_tb(exc, tb),
                             expected=expected, exc_type=type(exc).__qualname__)
        self.history.append(record)
        if expected:
            logger.warning("%s: %s", title, message)
        else:
            logger.error("%s", title, exc_info=(type(exc), exc, tb or exc.__traceback__))
        if expected and panel is not None:
            panel.show_message(f"{title}: {message}")
        elif self.show_dialogs:
            self._open_dialog(record)
        self.sig_reported.emit(record)
        return record

    @Slot(object, object, object, str)
    def _on_self_thread_report(self, exc: BaseException, tb: Any, panel: Any, context: str) -> None:
        self.report(exc, context=context, panel=panel, tb=tb)

    def _open_dialog(self, record: ErrorRecord) -> ErrorDialog:
        dialog = ErrorDialog(record, self._parent_widget)
        self.dialogs.append(dialog)
        dialog.finished.connect(lambda _=0, d=dialog: self._forget(d))
        dialog.show()  # non-modal: the console keeps running
        return dialog

    def _forget(self, dialog: ErrorDialog) -> None:
        if dialog in self.dialogs:
            self.dialogs.remove(dialog)

    def close_dialogs(self) -> None:
        """Close every open error dialog (at shutdown and in tests)."""
        for dialog in list(self.dialogs):
            dialog.close()
        self.dialogs.clear()


def install_excepthooks(reporter: ErrorReporter) -> Callable[[], None]:
    """Route uncaught exceptions to ``reporter``; returns a function that undoes it.

    pyqtgraph is imported first: on import it replaces ``sys.excepthook`` and
    ``threading.excepthook`` with its own wrappers, which would otherwise replace ours.
    ``KeyboardInterrupt`` keeps the previous behaviour.
    """
    import pyqtgraph  # noqa: F401  (its import overrides the hooks; ours must come after)

    prev_sys = sys.excepthook
    prev_thread = threading.excepthook

    def sys_hook(exc_type: type[BaseException], exc: BaseException,
                 tb: TracebackType | None) -> None:
        if issubclass(exc_type, KeyboardInterrupt):
            prev_sys(exc_type, exc, tb)
            return
        try:
            reporter.report(exc, tb=tb)
        except Exception:  # never let the hook itself fail silently
            prev_sys(exc_type, exc, tb)

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is None or issubclass(args.exc_type, SystemExit):
            prev_thread(args)
            return
        name = args.thread.name if args.thread is not None else "a worker thread"
        try:
            reporter.report(args.exc_value, tb=args.exc_traceback, context=f"finish work in {name}")
        except Exception:
            prev_thread(args)

    sys.excepthook = sys_hook
    threading.excepthook = thread_hook

    def uninstall() -> None:
        if sys.excepthook is sys_hook:
            sys.excepthook = prev_sys
        if threading.excepthook is thread_hook:
            threading.excepthook = prev_thread

    return uninstall
