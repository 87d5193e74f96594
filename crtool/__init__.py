"""crtool: a whitelist challenge-response mail agent.

Nothing is imported here on purpose: `crtool deliver` runs once per message and pays for every
import, so each module pulls in only what the branch it serves needs.
"""

__version__ = "0.1.0"
