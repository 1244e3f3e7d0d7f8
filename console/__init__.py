"""SpeakerOps' Qt console: the only package that imports PySide6 and pyqtgraph.

Entry point :func:`console.app.main`; composition root :mod:`console.bootstrap`; background work
through :mod:`console.jobs`; failures through :mod:`console.errors`; looks from
:mod:`console.theme`.
"""
