"""A matplotlib backend for ``%%container`` cells: Agg, with ``plt.show()`` sending the figures to the notebook.

Selected by the agent through ``MPLBACKEND=module://sk_matplotlib``; figures still
open when a cell ends are sent too, as Jupyter's inline backend does.
"""

import sys

from matplotlib.backend_bases import FigureManagerBase as FigureManager  # noqa: F401
from matplotlib.backends.backend_agg import FigureCanvasAgg as FigureCanvas  # noqa: F401


def show(*args, **kwargs):
    agent = sys.modules.get("sk_agent")
    worker = getattr(agent, "WORKER", None)
    if worker is not None:
        worker.flush_figures()
