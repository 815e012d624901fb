"""State-space speech separation (S4M, SPMamba) as a SpeechBrain plugin.

The package is organised so that imports point one way:
``ssm`` (sequence maths) <- ``layers`` <- ``models`` <- ``brain`` /
``inference`` <- ``cli``.
"""

__version__ = "0.1.0"
