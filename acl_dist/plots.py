"""Matplotlib for the reports: the headless backend, and a figure as PNG bytes."""

from __future__ import annotations

import io


def figure_png(fig) -> bytes:
    """The figure as PNG bytes (110 dpi, tight); the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed), with math text off:
    labels are class and video names from the user's files, and a ``$`` in one would be
    parsed as TeX (a name like ``a$^{x`` stops the figure with a parse error)."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt

    return plt
