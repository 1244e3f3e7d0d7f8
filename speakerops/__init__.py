"""SpeakerOps: the shared foundation (settings, database, clock) and the ``speakerops`` CLI.

The core packages ``fleet``, ``inference_core`` and ``feedback`` build on this package; the Qt
console (``console``) builds on all of them. Only ``speakerops.cli`` may import ``console``
(lazily, to open the window).
"""

__version__ = "0.1.0"
