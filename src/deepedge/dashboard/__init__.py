"""A browser dashboard over what a session records: the cluster's devices, the LC apps'
latency against their deadlines, the knowledge base and past runs (``deepedge
dashboard``).

Exported lazily (:mod:`deepedge.lazy`): the CLI must start without importing FastAPI.
"""

from typing import TYPE_CHECKING

from deepedge.lazy import lazy_exports

if TYPE_CHECKING:
    from deepedge.dashboard.app import PAGES, check_bind, create_app
    from deepedge.dashboard.server import DashboardServer
    from deepedge.dashboard.sources import Sources

_LAZY = {
    "PAGES": "deepedge.dashboard.app",
    "check_bind": "deepedge.dashboard.app",
    "create_app": "deepedge.dashboard.app",
    "DashboardServer": "deepedge.dashboard.server",
    "Sources": "deepedge.dashboard.sources",
}
__getattr__, __dir__ = lazy_exports(globals(), _LAZY)

__all__ = ["PAGES", "DashboardServer", "Sources", "check_bind", "create_app"]
