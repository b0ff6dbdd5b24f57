"""The one place that converts between seconds and snippet indices.

Convention (BaSNet/UM/CoLA/ACM-Net, FORMATS.md §1.1): a video resampled to ``fps`` frames
per second is cut into non-overlapping chunks of ``snippet_frames`` frames; snippet ``i``
covers ``[i * s, (i + 1) * s)`` seconds with ``s = snippet_frames / fps`` (0.64 s for the
standard 16 frames at 25 fps). There is no half-snippet centre offset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SnippetGrid:
    """Time grid of one video's snippet features.

    Attributes:
        fps: frames per second of the (resampled) video the features were computed on.
        snippet_frames: frames per snippet, which is also the stride between snippets.
    """

    fps: float = 25.0
    snippet_frames: int = 16

    def __post_init__(self) -> None:
        if not (self.fps > 0 and math.isfinite(self.fps)):
            raise ValueError(f"fps must be a positive number, got {self.fps!r}")
        if self.snippet_frames <= 0:
            raise ValueError(f"snippet_frames must be positive, got {self.snippet_frames!r}")

    @property
    def seconds_per_snippet(self) -> float:
        """Length of one snippet in seconds (0.64 for 16 frames at 25 fps)."""
        return self.snippet_frames / self.fps

    def to_seconds(self, index):
        """Seconds at (possibly fractional) snippet position ``index`` (scalar or array)."""
        return np.multiply(index, self.seconds_per_snippet, dtype=np.float64)

    def to_index(self, seconds):
        """Fractional snippet position of a time in seconds (inverse of :meth:`to_seconds`)."""
        return np.divide(seconds, self.seconds_per_snippet, dtype=np.float64)

    def span_seconds(self, first: int, last_exclusive: int) -> tuple[float, float]:
        """Seconds covered by the snippets ``first .. last_exclusive - 1``."""
        return first * self.seconds_per_snippet, last_exclusive * self.seconds_per_snippet

    def num_snippets(self, duration_s: float) -> int:
        """Number of whole snippets in a video of ``duration_s`` seconds (at least 1)."""
        return max(1, int(math.floor(duration_s / self.seconds_per_snippet + 1e-9)))

    def coverage(self, num_snippets: int) -> float:
        """Seconds covered by ``num_snippets`` snippets."""
        return num_snippets * self.seconds_per_snippet

    def segment_mask(self, segments: np.ndarray, num_snippets: int) -> np.ndarray:
        """Boolean ``(num_snippets,)`` mask of snippets whose centre lies in any segment.

        Args:
            segments: ``(N, 2)`` array of ``[start_s, end_s]``.
            num_snippets: T.
        """
        centres = (np.arange(num_snippets) + 0.5) * self.seconds_per_snippet
        mask = np.zeros(num_snippets, dtype=bool)
        for start, end in np.asarray(segments, dtype=np.float64).reshape(-1, 2):
            mask |= (centres >= start) & (centres < end)
        return mask


STANDARD_GRID = SnippetGrid(25.0, 16)
