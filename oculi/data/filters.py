"""Image filters from the kernels tutorial: sharpen, Gaussian blur, Canny edges, blur then sharpen.

Each takes and returns a uint8 image [C, H, W] (edges returns one channel, 0 or 255), computed in torch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SHARPEN_KERNEL = torch.tensor([[0.0, -1.0, 0.0], [-1.0, 5.0, -1.0], [0.0, -1.0, 0.0]])
SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def _per_channel(image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """float [C, H, W] convolved channel by channel with a 2-d kernel, borders replicated."""
    c = image.shape[0]
    pad_y, pad_x = kernel.shape[0] // 2, kernel.shape[1] // 2
    padded = F.pad(image[None].float(), (pad_x, pad_x, pad_y, pad_y), mode="replicate")
    return F.conv2d(padded, kernel.to(image.device).expand(c, 1, *kernel.shape).contiguous(), groups=c)[0]


def _to_uint8(image: torch.Tensor) -> torch.Tensor:
    return image.round().clamp(0, 255).to(torch.uint8)


def sharpen(image: torch.Tensor) -> torch.Tensor:
    """The 3x3 kernel 0,-1,0 / -1,5,-1 / 0,-1,0."""
    return _to_uint8(_per_channel(image, SHARPEN_KERNEL))


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """A normalised 2-d Gaussian, 2 * ceil(3 sigma) + 1 pixels wide."""
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def blur(image: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    return _to_uint8(_per_channel(image, gaussian_kernel(sigma)))


def blur_sharpen(image: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    return sharpen(blur(image, sigma))


def edges(image: torch.Tensor, low: float = 50.0, high: float = 150.0, sigma: float = 1.4) -> torch.Tensor:
    """Canny: Gaussian blur, Sobel gradients, non-maximum suppression, then hysteresis: pixels above
    ``high`` are edges, and so are pixels above ``low`` connected (8-neighbours) to them through others
    above ``low``. Thresholds are gradient magnitudes (Sobel, L2) on the 0-255 scale."""
    gray = image.float().mean(0, keepdim=True) if image.shape[0] > 1 else image.float()
    smooth = _per_channel(gray, gaussian_kernel(sigma))
    gx, gy = _per_channel(smooth, SOBEL_X)[0], _per_channel(smooth, SOBEL_X.T)[0]
    magnitude = torch.hypot(gx, gy)
    thin = magnitude * _is_local_maximum(magnitude, torch.atan2(gy, gx))
    return (_hysteresis(thin >= high, thin >= low).to(torch.uint8) * 255)[None]


def _is_local_maximum(magnitude: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """True where the magnitude is at least both neighbours' along the gradient (one of 4 directions)."""
    padded = F.pad(magnitude[None, None], (1, 1, 1, 1))[0, 0]
    h, w = magnitude.shape
    neighbour = lambda dy, dx: padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]  # noqa: E731
    sector = torch.round(angle / (math.pi / 4)).long() % 4  # 0: horizontal gradient, 1: 45°, 2: vertical, 3: 135°
    steps = [(0, 1), (1, 1), (1, 0), (1, -1)]
    keep = torch.zeros_like(magnitude, dtype=torch.bool)
    for s, (dy, dx) in enumerate(steps):
        is_max = (magnitude >= neighbour(dy, dx)) & (magnitude >= neighbour(-dy, -dx))
        keep |= (sector == s) & is_max
    return keep & (magnitude > 0)


def _hysteresis(strong: torch.Tensor, weak: torch.Tensor) -> torch.Tensor:
    """Grow ``strong`` through 8-connected ``weak`` pixels until nothing changes."""
    edges = strong & weak
    while True:
        grown = F.max_pool2d(edges[None, None].float(), 3, stride=1, padding=1)[0, 0].bool() & weak
        if torch.equal(grown, edges):
            return edges
        edges = grown


FILTERS = {"sharpen": sharpen, "blur": blur, "edges": edges, "blur+sharpen": blur_sharpen}
