"""Batched image operations on float (B, C, H, W) tensors, on any device: RandomResizedCrop's boxes and PIL's
antialiased resampling, reflect-padded translation, flips, ColorJitter, grayscale, Gaussian blur, and CIE Lab
(rgb_to_lab, its inverse, the normalisation of CMC's views). Functions of their inputs and of random parameters
drawn per sample from torch's global generator; no view recipe (augment.py's batched views are made of them).
"""
import functools
import math

import numpy as np
import torch

# How a view is made: first every random number of the whole batch is drawn, as tensors on the device, in a
# fixed order (deterministic per seed): the *_draws functions, each paired with a *_from that derives the
# operation's parameters from them (sample_crop_boxes = crop_boxes(crop_box_draws(...)), and so on), so that
# everything after the draws is a pure function of the images and the draws, which torch.compile can fuse
# (augment.compile_views). No tensor's shape depends on a draw, so the host never waits for a GPU.
# Then the images go through the view's passes chunk by chunk (_chunks), each pass in place: on the CPU a chunk
# is small enough to stay in the cache for the thirty-odd passes of a view, which would otherwise each stream
# the whole batch from memory (and allocate it anew); on a GPU the chunk is the whole batch. The geometry (crop
# and resize, translation, flip, the scaling of 8-bit values to [0, 1]) is linear in the pixels, separable, and
# one pair of small matrices per sample: two batched matmuls (_resample); so is the Gaussian blur.
#
# Most passes change only some samples (a jitter operation at one place of a sample's random order, the 20-25 %
# turned grey, the half blurred). On a GPU every pass runs masked over the whole batch: reading which samples
# take it would make the host wait. On the CPU reading the draws is free, so a view first sorts its samples by
# the passes they take (_sorted_chunks) and each pass works only on the runs of consecutive samples that take
# it (_runs): the jitter's six brightness/contrast/saturation passes do the work of 2.4 (see jitter_params),
# the blur half. Every sample's result is the same either way: a skipped pass is an exact identity.

_GRAY = (0.299, 0.587, 0.114)      # ITU-R 601-2 luma, as PIL's convert("L") and torchvision use
CPU_CHUNK_BYTES = 1 << 20          # float32 output bytes per chunk on the CPU: a chunk's passes stay in L2/L3
# Device types on which a view reads its random draws to skip the samples a pass leaves alone (_runs): the
# CPU, where the draws already are in host memory; elsewhere the read would be a host-device sync.
SKIPS_ON = ("cpu",)


def _chunks(out):
    """Slices of out's first dimension (B, ...) to work through in turn: on the CPU about CPU_CHUNK_BYTES of
    float32 each (at least one sample), elsewhere (a GPU) the whole batch."""
    n = out.shape[0]
    if out.device.type != "cpu":
        return [slice(0, n)]
    step = max(1, CPU_CHUNK_BYTES // max(1, out[:1].numel() * 4))
    return [slice(i, min(n, i + step)) for i in range(0, n, step)]


def _sorted_chunks(out, *takes):
    """(samples, x) for each chunk of out's samples (B, ...) to work through in turn: x the chunk's buffer to
    fill and process in place, samples which of the batch's samples it holds, in x's order (a slice or an index
    tensor, to index the per-sample draws and inputs with). takes: bool tensors (B,) or (B, k), which passes
    each sample takes, the most costly first.

    Off SKIPS_ON devices: _chunks, x a view of out. On the CPU the samples go in the order of what they take
    (_takes_key), so that each pass's takers make few runs in a chunk (_runs); x is a reused buffer, copied
    into out at the samples' places once its chunk is done."""
    if _masked(out):
        for s in _chunks(out):
            yield s, out[s]
        return
    order = torch.argsort(_takes_key(*takes), stable=True)
    chunks = _chunks(out)
    if not chunks:                                   # an empty batch
        return
    buffer = torch.empty_like(out[chunks[0]])
    for s in chunks:
        samples, x = order[s], buffer[:s.stop - s.start]
        yield samples, x
        out.index_copy_(0, samples, x)


def _takes_key(*takes):
    """takes: bool tensors (B,) or (B, k), which passes each sample takes, the most costly first -> int (B,):
    their bits read as one binary number."""
    bits = torch.cat([t.unsqueeze(1) if t.dim() == 1 else t for t in takes], dim=1).long()
    return (bits << torch.arange(bits.shape[1] - 1, -1, -1, device=bits.device)).sum(1)


def _runs(takes):
    """Where a pass should work, given which samples of a chunk take it (takes: bool (n,)): on SKIPS_ON devices
    the slices of consecutive samples that take it (none if no sample does); elsewhere the whole chunk
    (slice(None)), the pass masked so that it leaves the other samples unchanged."""
    if _masked(takes):
        return [slice(None)]
    runs, start = [], None
    for i, t in enumerate(takes.tolist() + [False]):
        if t and start is None:
            start = i
        elif not t and start is not None:
            runs.append(slice(start, i))
            start = None
    return runs


def _masked(t):
    """Whether passes over t's samples run masked over the whole chunk (off SKIPS_ON devices) rather than on
    the runs of samples that take them (_runs), where every sample of a run takes the pass."""
    return t.device.type not in SKIPS_ON


def _take(tensors, s):
    """Samples s (_at) of each of a tuple of tensors."""
    return tuple(_at(t, s) for t in tensors)


def _at(t, s):
    """Samples s of t (B, ...): s a slice (a view) or an index tensor (a copy; index_select, much faster than
    t[s] on the CPU)."""
    return t[s] if isinstance(s, slice) else t.index_select(0, s)


def _pixel_scale(images):
    """What the resampling weights are multiplied by to bring images' values into [0, 1]: 1/255 for uint8."""
    return 1 / 255 if images.dtype == torch.uint8 else 1.0


# Resampling along one axis, per sample, in compact form: a pair (index, weight) of tensors (B, S, K), output
# pixel i of sample b the sum over k of weight[b, i, k] times input pixel index[b, i, k] (K taps at most).

def _dense(line, in_size, transpose=False):
    """Compact weights (index, weight), each (n, S, K) -> the dense matrix (n, S, in_size), or its transpose
    (n, in_size, S). Deterministic on a GPU too: an output's taps are distinct pixels, except clamped ones,
    whose weight is 0 (adding exact zeros in any order changes nothing)."""
    index, weight = line
    n, size, _ = index.shape
    if transpose:
        dense = torch.zeros(n, in_size, size, device=weight.device)
        return dense.scatter_add_(1, index.transpose(1, 2), weight.transpose(1, 2))
    return torch.zeros(n, size, in_size, device=weight.device).scatter_add_(2, index, weight)


def _resample(x, rows, cols, out):
    """Separable linear resampling: x (n, C, H, W), uint8 or float; rows and cols compact weights ((n, S, K)
    into H; (n, T, L) into W) -> out (n, C, S, T) = rows @ x @ cols^T per sample and channel, as two batched
    matmuls (written into out and returned)."""
    n, c, h, w = x.shape
    y = torch.matmul(x.reshape(n, c * h, w).float(), _dense(cols, w, transpose=True))   # (n, C H, T)
    return torch.matmul(_dense(rows, h).unsqueeze(1), y.view(n, c, h, -1), out=out)


def _scaled(line, factor):
    """Compact weights with every weight multiplied by factor."""
    index, weight = line
    return index, weight * factor


def _mirror_input(line, flip, in_size):
    """Compact weights that read the input mirrored (index i -> in_size - 1 - i) where flip (bool (B,))."""
    index, weight = line
    return torch.where(flip.view(-1, 1, 1), in_size - 1 - index, index), weight


def _mirror_output(line, flip):
    """Compact weights whose output is mirrored (pixel i <- S - 1 - i) where flip (bool (B,))."""
    flip = flip.view(-1, 1, 1)
    return tuple(torch.where(flip, t.flip(1), t) for t in line)


def _bicubic(t):
    """PIL's bicubic kernel (a = -0.5; support 2) at offsets t, in pixels of the kernel's scale: the cubic
    `near` on |t| < 1, the cubic `far` on 1 <= |t| < 2, 0 beyond. Both vanish at 1 and far at 2, so the kernel
    is near(min(|t|, 1)) + far(clamp(|t|, 1, 2)): clamps, faster than comparisons and selects."""
    a, t = -0.5, t.abs()
    u, v = t.clamp(max=1.0), t.clamp_(1.0, 2.0)
    near = u.mul((a + 2)).sub_(a + 3).mul_(u).mul_(u).add_(1)
    far = v.mul(a).sub_(5 * a).mul_(v).add_(8 * a).mul_(v).sub_(4 * a)
    return near.add_(far)


def _triangle(t):
    """The bilinear kernel (support 1) at offsets t."""
    return (1 - t.abs()).clamp(min=0)


_KERNELS = {"bicubic": (_bicubic, 2.0), "bilinear": (_triangle, 1.0)}


def resize_weights(start, length, in_size, out_size, mode):
    """Compact resampling weights (index, weight), each (B, out_size, K): those of output pixel i when
    pixels start..start+length-1 (int tensors (B,)) of a line of in_size pixels are resized to out_size, as
    PIL's resize (and torchvision's antialiased tensor resize) does to the cropped line: the kernel
    ("bicubic" or "bilinear") centred on the output pixel's centre, widened by the scale when it shrinks
    (antialiasing), limited to the crop and normalised to sum 1.

    K = ceil(2 support max(in_size / out_size, 1)) + 1 taps cover the widest kernel; a tap outside the crop (or
    the kernel) has weight 0 (and its index clamped into the line)."""
    kernel, support = _KERNELS[mode]
    device = start.device
    start, length = start.float()[:, None, None], length.float()[:, None, None]      # (B, 1, 1)
    scale = length / out_size                                   # input pixels per output pixel
    stretch = scale.clamp(min=1.0)                              # the kernel widens only to shrink
    centre = start + (torch.arange(out_size, device=device, dtype=torch.float32)[:, None] + 0.5) * scale
    n_taps = math.ceil(2 * support * max(in_size / out_size, 1.0)) + 1
    first = torch.floor(centre - support * stretch + 0.5)                             # (B, out, 1)
    taps = first + torch.arange(n_taps, device=device, dtype=torch.float32)           # (B, out, taps)
    w = kernel((taps + 0.5 - centre) / stretch) * ((taps >= start) & (taps < start + length))
    return taps.long().clamp_(0, in_size - 1), w / w.sum(-1, keepdim=True)


def crop_weights(boxes, height, width, size, mode):
    """Compact weights (rows, cols) that resize each box (top, left, h, w) of an image height x width to
    size x size (resize_weights along each axis)."""
    top, left, h, w = boxes
    return resize_weights(top, h, height, size, mode), resize_weights(left, w, width, size, mode)


def translate_weights(b, height, width, pad, p, device):
    """RandomCrop(padding=pad, "reflect") applied with probability p per sample, as resampling matrices: a
    shift by up to +-pad px in y and x (uniform), filling with reflection. Returns compact weights (rows, cols)
    of one tap each, weight 1."""
    return translate_from(translate_draws(b, pad, p, device), height, width, pad)


def translate_draws(b, pad, p, device):
    """translate_weights' random numbers for b samples: (apply bool (B,), dy, dx int (B,) in 0..2 pad)."""
    return (_coin(b, p, device), torch.randint(0, 2 * pad + 1, (b,), device=device),
            torch.randint(0, 2 * pad + 1, (b,), device=device))


def translate_from(draws, height, width, pad):
    """translate_draws' numbers -> translate_weights' compact weights (rows, cols) for images height x width."""
    apply, dy, dx = draws
    dy, dx = torch.where(apply, dy, pad), torch.where(apply, dx, pad)
    return _shift_weights(dy - pad, height), _shift_weights(dx - pad, width)


def _shift_weights(offset, size):
    """offset: int (B,) -> compact weights: output pixel i is input pixel i + offset, reflected at the borders
    (the offset is at most size - 1)."""
    src = torch.arange(size, device=offset.device) + offset[:, None]                 # (B, size)
    src = torch.where(src < 0, -src, torch.where(src > size - 1, 2 * (size - 1) - src, src))
    return src[:, :, None], torch.ones(*src.shape, 1, device=offset.device)


def random_translate(x, pad, p):
    """x: float (B, C, H, W) -> (B, C, H, W). With probability p per sample, shift by up to +-pad px in x and
    y (uniform), filling with reflection: a crop of the reflect-padded image at a random offset, as
    RandomCrop(padding, "reflect")."""
    b, _, h, w = x.shape
    rows, cols = translate_weights(b, h, w, pad, p, x.device)
    out = torch.empty_like(x, dtype=torch.float32)
    for s in _chunks(out):
        _resample(x[s], _take(rows, s), _take(cols, s), out=out[s])
    return out


def sample_crop_boxes(n, height, width, scale, ratio, device=None, attempts=10):
    """RandomResizedCrop's boxes for n images: (top, left, h, w) int tensors of shape (n,).

    As torchvision: up to `attempts` tries of an area fraction ~ U(scale) and a log-uniform aspect ratio; the
    first box that fits wins; if none fits, a centre crop with the ratio clamped into range.
    """
    return crop_boxes(crop_box_draws(n, scale, ratio, device, attempts), height, width, ratio)


def crop_box_draws(n, scale, ratio, device=None, attempts=10):
    """sample_crop_boxes' random numbers for n images: (area fraction (n, attempts) ~ U(scale), log aspect
    ratio (n, attempts) ~ U(log ratio), top and left (n,) ~ U(0, 1), scaled to the room the box leaves)."""
    fraction = torch.empty(n, attempts, device=device).uniform_(*scale)
    log_r = torch.empty(n, attempts, device=device).uniform_(np.log(ratio[0]), np.log(ratio[1]))
    return fraction, log_r, torch.rand(n, device=device), torch.rand(n, device=device)


def crop_boxes(draws, height, width, ratio):
    """crop_box_draws' numbers -> sample_crop_boxes' boxes (top, left, h, w) in images height x width."""
    fraction, log_r, u_top, u_left = draws
    n = fraction.shape[0]
    target = height * width * fraction
    aspect = torch.exp(log_r)
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.where(fits.any(1), fits.float().argmax(1), 0)
    rows = torch.arange(n, device=fraction.device)
    h, w, ok = h[rows, first], w[rows, first], fits.any(1)
    # Fallback: the whole image, cropped to the nearest allowed ratio.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fh, fw = height, round(height * ratio[1])
    else:
        fw, fh = width, height
    h = torch.where(ok, h, float(fh)).long()
    w = torch.where(ok, w, float(fw)).long()
    top = torch.where(ok, (u_top * (height - h + 1)).floor().long(), (height - h) // 2)
    left = torch.where(ok, (u_left * (width - w + 1)).floor().long(), (width - w) // 2)
    return top, left, h, w


def random_resized_crop(x, size, scale, ratio, mode="bicubic"):
    """x: float (B, C, H, W) in [0, 1] -> (B, C, size, size) in [0, 1]. Crop a random box per sample
    (sample_crop_boxes with scale and ratio ranges as RandomResizedCrop's) and resize it to size x size as PIL
    does (resize_weights; mode "bicubic" or "bilinear")."""
    b, c, height, width = x.shape
    rows, cols = crop_weights(sample_crop_boxes(b, height, width, scale, ratio, x.device), height, width, size,
                              mode)
    out = torch.empty(b, c, size, size, device=x.device)
    for s in _chunks(out):
        _resample(x[s], _take(rows, s), _take(cols, s), out=out[s]).clamp_(0, 1)
    return out


def _luma(x):
    """RGB x (B, 3, H, W) -> luma (B, 1, H, W) (a matmul: one pass over x, faster than three)."""
    b, _, h, w = x.shape
    return torch.matmul(_channels(_GRAY, x.device).view(1, 3), x.reshape(b, 3, h * w)).view(b, 1, h, w)


def jitter_params(b, brightness, contrast, saturation, hue, p, device):
    """ColorJitter's random parameters for b samples, applied with probability p each: brightness, contrast and
    saturation factors and a hue shift drawn per sample, and the four operations in a random order per sample
    (as torchvision draws one per call).

    Returns (coeffs (B, 6, 3), shift (B,), apply (B,) bool) for _color_jitter_, which runs the hue shift, the
    costly operation, once for every sample: brightness, contrast and saturation run at six passes, each sample
    taking its operations placed before its hue shift at the first three (in its order) and those after it at
    the last three. Pass k maps x -> a x + c mean(luma) + d luma with (a, c, d) = coeffs[:, k]: brightness is
    (f, 0, 0), contrast (f, 1 - f, 0), saturation (f, 0, 1 - f), and the identity, exactly, (1, 0, 0). shift is
    the hue shift in sixths of the circle; samples that do not take the jitter keep their hue (apply False)."""
    return jitter_from(jitter_draws(b, brightness, contrast, saturation, hue, p, device))


def jitter_draws(b, brightness, contrast, saturation, hue, p, device):
    """jitter_params' random numbers for b samples: (apply bool (B,), the four factors (a tuple of (B,):
    brightness, contrast and saturation around 1, the hue shift in turns), (B, 4) uniforms whose ranks order
    the four operations)."""
    apply = _coin(b, p, device)
    factors = [torch.empty(b, device=device).uniform_(1 - brightness, 1 + brightness),
               torch.empty(b, device=device).uniform_(1 - contrast, 1 + contrast),
               torch.empty(b, device=device).uniform_(1 - saturation, 1 + saturation),
               torch.empty(b, device=device).uniform_(-hue, hue)]
    return apply, tuple(factors), torch.rand(b, 4, device=device)


def jitter_from(draws):
    """jitter_draws' numbers -> jitter_params' (coeffs, shift, apply)."""
    apply, factors, noise = draws
    order = torch.argsort(noise, dim=1)
    place = torch.argsort(order, dim=1)              # place[:, k]: where operation k comes in the sample's order
    before_hue = place[:, :3] < place[:, 3:]         # (B, 3): brightness, contrast, saturation before the hue
    passes = []
    for active, places in ((apply[:, None] & before_hue, range(3)), (apply[:, None] & ~before_hue, range(1, 4))):
        for at in places:
            takes = active & (place[:, :3] == at)                   # (B, 3): at most one operation a sample
            f = [torch.where(takes[:, k], factors[k], 1.0) for k in range(3)]
            passes.append(torch.stack([f[0] * f[1] * f[2], 1 - f[1], 1 - f[2]], dim=1))     # two are 1
    return torch.stack(passes, dim=1), 6 * factors[3], apply


def color_jitter(x, brightness, contrast, saturation, hue, p):
    """x: RGB float (B, 3, H, W) in [0, 1] -> (B, 3, H, W) in [0, 1]. ColorJitter applied with probability p
    per sample (jitter_params, then _color_jitter_ on a copy)."""
    params = jitter_params(x.shape[0], brightness, contrast, saturation, hue, p, x.device)
    out = x.float().clone()
    for s in _chunks(out):
        _color_jitter_(out[s], *(t[s] for t in params))
    return out


def _color_jitter_(x, coeffs, shift, apply):
    """x: RGB float (n, 3, H, W) in [0, 1], jittered in place by jitter_params' (coeffs, shift, apply); each
    pass only where samples take it (_runs)."""
    takes = _jitter_takes(coeffs)
    for k in range(6):
        if k == 3:
            for s in _runs(apply):
                _hue_(x[s], shift[s], apply[s] if _masked(x) else None)
        for s in _runs(takes[:, k]):
            _scale_(x[s], coeffs[s, k])
    return x


def _jitter_takes(coeffs):
    """coeffs (n, 6, 3) of jitter_params -> bool (n, 6): which of the six scaling passes change each sample
    (those whose (a, c, d) is not the identity's (1, 0, 0))."""
    return (coeffs != _constant((1.0, 0.0, 0.0), coeffs.device)).any(2)


def _scale_(x, coeffs):
    """x -> clamp(a x + c mean(luma) + d luma, 0, 1) in place, (a, c, d) = coeffs (n, 3) per sample: brightness,
    contrast or saturation (see jitter_params), rounding as torchvision's."""
    a, c, d = (v.view(-1, 1, 1, 1) for v in coeffs.unbind(1))
    luma = _luma(x)
    offset = torch.addcmul(c * luma.mean(dim=(2, 3), keepdim=True), luma, d, out=luma)
    return torch.addcmul(offset, x, a, out=x).clamp_(0, 1)


def _hue_(x, shift, apply=None):
    """RGB x (n, 3, H, W) in [0, 1], in place: the samples where apply (bool (n,); None: every sample) get
    their HSV hue rotated by shift (n,) sixths of the circle, as torchvision's adjust_hue (RGB -> HSV, shift,
    back) without forming saturation and value: each pixel keeps its largest and smallest channel, and channel
    n (5 for red, 3 green, 1 blue) becomes min + (max - min) clamp(| |k - 5| - 3 | - 1, 0, 1), k = n + hue mod
    6 (the hue in sixths): HSV's v - v s clamp(min(k, 4 - k), 0, 1) with the trapezoid written as a distance to
    its centre."""
    high, low = x.amax(1), x.amin(1)                 # amax/amin: the index-returning max/min are far slower
    delta = high - low
    r, g, b = x.unbind(1)
    # Hue times delta, in sixths, by the largest channel (red wins ties, then green); 0 for grey pixels. Blends
    # by 0/1 masks (lerp, exact at 0 and 1) are faster than torch.where on the CPU.
    hue = torch.lerp(torch.sub(r, g).add_(delta, alpha=4), torch.sub(b, r).add_(delta, alpha=2), _is(g, high))
    hue = torch.lerp(hue, g - b, _is(r, high))
    hue.div_(delta.clamp(min=1e-12)).add_(shift.view(-1, 1, 1))
    hue.sub_(hue.div(6).floor_(), alpha=6)           # mod 6: [0, 6] (6 and 0 are one hue)
    ramp = torch.add(hue.unsqueeze(1), _channels((0.0, -2.0, -4.0), x.device))        # k - 5, in [-4, 6]
    ramp.abs_().sub_(3).abs_().clamp_(1, 2)          # the distance to the trapezoid's centre, clamped to 1..2
    if apply is None:
        return torch.addcmul((low - delta).unsqueeze(1), delta.unsqueeze(1), ramp, out=x)
    shifted = torch.addcmul((low - delta).unsqueeze(1), delta.unsqueeze(1), ramp, out=ramp)
    return torch.lerp(x, shifted, apply.to(x.dtype).view(-1, 1, 1, 1), out=x)


def _is(a, b):
    """1.0 where a == b, else 0.0 (float, a's shape)."""
    return torch.eq(a, b, out=torch.empty_like(a))


# The four ColorJitter operations on their own (what _color_jitter_ computes; the tests compare them with
# torchvision's): x RGB (B, 3, H, W) in [0, 1], f factors (B, 1, 1, 1); hue f in turns.

def _brightness(x, f):
    f = f.view(-1)
    return _scale_(x.float().clone(), torch.stack([f, torch.zeros_like(f), torch.zeros_like(f)], 1))


def _contrast(x, f):
    f = f.view(-1)
    return _scale_(x.float().clone(), torch.stack([f, 1 - f, torch.zeros_like(f)], 1))


def _saturation(x, f):
    f = f.view(-1)
    return _scale_(x.float().clone(), torch.stack([f, torch.zeros_like(f), 1 - f], 1))


def _hue(x, f):
    f = f.view(-1)
    return _hue_(x.float().clone(), 6 * f, torch.ones_like(f, dtype=torch.bool))


def gaussian_kernels(sigma, radius):
    """sigma: float (B,) -> normalised 1-D Gaussian kernels (B, 2 radius + 1), taps at -radius..radius px."""
    t = torch.arange(-radius, radius + 1, device=sigma.device, dtype=sigma.dtype)
    k = torch.exp(-0.5 * (t / sigma[:, None]) ** 2)
    k = k / k.sum(1, keepdim=True)
    # Taps under 2^-24 (a small sigma's tails, down to 1e-22) change no pixel in [0, 1] by more than 1e-6 in all,
    # but their products with small pixel values are subnormal floats, which slow the CPU's blur down.
    return torch.where(k < 2 ** -24, 0.0, k)


def blur_kernels(b, sigma, p, device):
    """Gaussian blurs drawn for b samples, each applied with probability p, its standard deviation uniform in
    sigma = (low, high) px: kernels (B, 2 radius + 1) truncated at radius = ceil(3 high) px; a sample not
    blurred gets the identity kernel (a single 1, exactly the input back)."""
    return blur_from(blur_draws(b, sigma, p, device), sigma)


def blur_draws(b, sigma, p, device):
    """blur_kernels' random numbers for b samples: (apply bool (B,), standard deviations (B,) ~ U(sigma))."""
    return _coin(b, p, device), torch.empty(b, device=device).uniform_(*sigma)


def blur_from(draws, sigma):
    """blur_draws' numbers, drawn in the range sigma = (low, high) -> blur_kernels' kernels."""
    apply, sigmas = draws
    radius = math.ceil(3 * sigma[1])
    return torch.where(apply[:, None], gaussian_kernels(sigmas, radius), _identity_kernel(radius, apply.device))


def _blur_(x, kernels):
    """x: float (n, C, H, W) blurred in place, sample b by the separable kernel kernels[b] ((n, 2 r + 1)), edge
    pixels repeated beyond the border (as PIL's GaussianBlur), only where samples take it (_runs, _blur_takes).
    The blur along a line is a banded matrix (blur_matrices), so the blur is two batched matmuls as the crop's
    resampling; faster on the CPU than a grouped depthwise conv2d, whose kernel varies per sample."""
    for s in _runs(_blur_takes(kernels)):
        y, k = x[s], kernels[s].to(x.dtype)
        n, c, h, w = y.shape
        if n:
            along_w = blur_matrices(k, w)
            along_h = along_w if h == w else blur_matrices(k, h)
            across = torch.matmul(y.reshape(n, c * h, w), along_w.transpose(1, 2))              # (n, C H, W)
            torch.matmul(along_h.unsqueeze(1), across.view(n, c, h, w), out=y)
    return x


def _blur_takes(kernels):
    """kernels (n, 2 r + 1) of blur_kernels -> bool (n,): the samples whose kernel is not the identity."""
    return (kernels != _identity_kernel(kernels.shape[1] // 2, kernels.device)).any(1)


def _identity_kernel(radius, device):
    """The kernel (2 radius + 1,) that blurs nothing: a single 1 at the centre."""
    return (torch.arange(-radius, radius + 1, device=device) == 0).float()


def blur_matrices(kernels, size):
    """kernels (n, 2 r + 1) -> (n, size, size): matrix b times a line of size pixels is the line convolved with
    kernels[b], edge pixels repeated beyond the ends (the taps that fall outside add to the edge pixel's
    weight). Built as one matmul with a 0/1 tensor, not by scattering: deterministic on a GPU too."""
    radius = kernels.shape[1] // 2
    taps = torch.arange(-radius, radius + 1, device=kernels.device)
    pixels = torch.arange(size, device=kernels.device)
    source = (pixels + taps[:, None]).clamp_(0, size - 1)                # (2 r + 1, size): the pixel each tap reads
    reads = (source[:, :, None] == pixels).to(kernels.dtype)            # (2 r + 1, size, size), 0/1 (one_hot syncs)
    return torch.matmul(kernels, reads.view(len(taps), size * size)).view(-1, size, size)


def gaussian_blur(x, sigma, radius):
    """x: float (B, C, H, W), sigma: (B,) -> (B, C, H, W), sample b blurred by a Gaussian of standard deviation
    sigma[b] px, truncated at `radius` px, edge pixels repeated beyond the border (as PIL's GaussianBlur)."""
    out = x.float().clone()
    kernels = gaussian_kernels(sigma.float(), radius)
    for s in _chunks(out):
        _blur_(out[s], kernels[s])
    return out


def random_gaussian_blur(x, sigma, p):
    """x: float (B, C, H, W) -> (B, C, H, W). With probability p per sample, a Gaussian blur whose standard
    deviation is drawn per sample, uniform in sigma = (low, high) px, truncated at ceil(3 high) px."""
    kernels = blur_kernels(x.shape[0], sigma, p, x.device)
    out = x.float().clone()
    for s in _chunks(out):
        _blur_(out[s], kernels[s])
    return out


def _grayscale_(x, gray):
    """RGB x (n, 3, H, W), in place: the samples where gray (bool (n,)) become their luma in all channels."""
    for s in _runs(gray):
        y = x[s]
        if _masked(x):
            torch.lerp(y, _luma(y).expand_as(y), gray[s].to(x.dtype).view(-1, 1, 1, 1), out=y)
        else:
            y.copy_(_luma(y).expand_as(y))
    return x


def random_grayscale(x, p):
    """x: RGB float (B, 3, H, W) -> (B, 3, H, W). With probability p per sample, replace the image by its luma
    in all three channels."""
    return _grayscale_(x.float().clone(), _coin(x.shape[0], p, x.device))


# CMC's views are the L and ab channels of the crop in CIE Lab (D65), normalised as the seed (HobbitLong/CMC,
# dataset.py) does the raw Lab values: L by mean 50, std 50; a and b to roughly [-1, 1] over their sRGB gamut.
LAB_MEAN = (50.0, (-86.183 + 98.233) / 2, (-107.857 + 94.478) / 2)
LAB_STD = (50.0, (86.183 + 98.233) / 2, (107.857 + 94.478) / 2)
_LAB_SCALE = tuple(1 / s for s in LAB_STD)                     # normalize_lab, folded into _lab_
_LAB_SHIFT = tuple(-m / s for m, s in zip(LAB_MEAN, LAB_STD))

# sRGB (linear) -> CIE XYZ and the D65 white point, as scikit-image's rgb2lab.
_XYZ_FROM_RGB = ((0.412453, 0.357580, 0.180423),
                 (0.212671, 0.715160, 0.072169),
                 (0.019334, 0.119193, 0.950227))
_D65_WHITE = (0.95047, 1.0, 1.08883)
_XYZ_OVER_WHITE = tuple(tuple(v / white for v in row) for row, white in zip(_XYZ_FROM_RGB, _D65_WHITE))
# (L, a, b) = _LAB_FROM_F (fx, fy, fz) + _LAB_OFFSET: 116 fy - 16, 500 (fx - fy), 200 (fy - fz).
_LAB_FROM_F = ((0.0, 116.0, 0.0), (500.0, -500.0, 0.0), (0.0, 200.0, -200.0))
_LAB_OFFSET = (-16.0, 0.0, 0.0)


def rgb_to_lab(x):
    """sRGB images x (B, 3, H, W), uint8 in 0..255 or float in [0, 1], -> float32 CIE Lab (B, 3, H, W) under
    D65 (L in 0..100): gamma expansion, the XYZ matrix, f(t) = cube root above (6/29)^3 and its linear segment
    below. Any device; agrees with skimage.color.rgb2lab."""
    x = (x.float() / 255 if x.dtype == torch.uint8 else x.float().clone()).contiguous()
    return _lab_(x, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))


def _lab_(x, scale, shift):
    """rgb_to_lab in place on float x (B, 3, H, W) in [0, 1], each Lab channel then multiplied by scale and
    shifted by shift (3 values each; normalize_lab's is (1 / LAB_STD, -LAB_MEAN / LAB_STD)).

    Both of Lab's piecewise curves (sRGB's gamma expansion, linear below 0.04045; f(t), linear below (6/29)^3)
    are continuous at their knee, so curve(v) = power(max(v, knee)) - slope * max(knee - v, 0): two clamps in
    place of a comparison and a blend, the two slowest passes on the CPU. Powers as exp(p log(t)), faster
    than pow there; the constant factor of the gamma power goes into the XYZ matrix (divided by the white
    point); Lab's linear map with the scale and shift is one per-pixel 3 x 3 matmul with a bias. float32 also
    under autocast (CMC's features() runs inside the model's autocast region: its matmuls would come out
    bfloat16/float16 and the in-place passes refuse mixed dtypes)."""
    with torch.autocast(x.device.type, enabled=False):
        return _lab_float32_(x, scale, shift)


_GAMMA_KNEE, _GAMMA_SLOPE = 0.04045, 1 / 12.92         # sRGB: v / 12.92 below the knee, ((v + a) / (1 + a))^2.4 above
_GAMMA_A = 0.055
_F_KNEE, _F_SLOPE = (6 / 29) ** 3, 1 / (3 * (6 / 29) ** 2)      # Lab's f: t / (3 delta^2) + 4/29 below, cbrt above


def _lab_float32_(x, scale, shift):
    b, _, h, w = x.shape
    x = x.view(b, 3, h * w)
    # (v + a)^2.4, i.e. the gamma power times (1 + a)^2.4, whose inverse the XYZ matrix carries.
    power_scale = (1 + _GAMMA_A) ** 2.4
    below = torch.rsub(x, _GAMMA_KNEE).clamp_(min=0)
    linear = x.clamp_(min=_GAMMA_KNEE).add_(_GAMMA_A).log_().mul_(2.4).exp_()
    linear.sub_(below, alpha=_GAMMA_SLOPE * power_scale)
    xyz_map = tuple(tuple(v / power_scale for v in row) for row in _XYZ_OVER_WHITE)
    xyz = torch.matmul(_constant(xyz_map, x.device), linear)                       # (B, 3, H W)
    below = torch.sub(xyz, _F_KNEE, out=below).neg_().clamp_(min=0)
    # f's linear piece meets its cube root at the knee: cbrt(max(t, knee)) - slope * max(knee - t, 0).
    f = xyz.clamp_(min=_F_KNEE).log_().mul_(1 / 3).exp_().sub_(below, alpha=_F_SLOPE)
    lab_map = tuple(tuple(s * v for v in row) for s, row in zip(scale, _LAB_FROM_F))
    bias = tuple(s * c + t for s, c, t in zip(scale, _LAB_OFFSET, shift))
    out = torch.matmul(_constant(lab_map, x.device), f, out=linear)
    return out.add_(_constant(bias, x.device).view(1, 3, 1)).view(b, 3, h, w)


def lab_to_rgb(lab):
    """CIE Lab (B, 3, H, W) under D65 -> sRGB float (B, 3, H, W) clamped to [0, 1]: rgb_to_lab's inverse (for
    pictures of CMC's views; training never needs it)."""
    l, a, b = lab.float().unbind(1)
    fy = (l + 16) / 116
    f = torch.stack([fy + a / 500, fy, fy - b / 200], dim=1)
    delta = 6 / 29
    white = torch.tensor(_D65_WHITE, dtype=torch.float32, device=lab.device).view(1, 3, 1, 1)
    xyz = torch.where(f > delta, f ** 3, 3 * delta ** 2 * (f - 4 / 29)) * white
    inverse = torch.linalg.inv(torch.tensor(_XYZ_FROM_RGB, dtype=torch.float64)).float().to(lab.device)
    linear = torch.einsum("ij,bjhw->bihw", inverse, xyz).clamp(0, 1)
    return torch.where(linear > 0.0031308, 1.055 * linear ** (1 / 2.4) - 0.055, 12.92 * linear).clamp(0, 1)


def cmc_views_to_rgb(l, ab, lightness=60.0):
    """CMC's normalised views -> pictures (B, 3, S, S) in [0, 1]: L (B, 1, S, S) as grey levels, ab (B, 2, S, S)
    as colour at a constant lightness."""
    mean, std = _channels(LAB_MEAN, l.device), _channels(LAB_STD, l.device)
    grey = (l.float() * std[:, :1] + mean[:, :1]).clamp(0, 100) / 100
    chroma = ab.float() * std[:, 1:] + mean[:, 1:]
    flat = torch.full_like(chroma[:, :1], lightness)
    return grey.expand(-1, 3, -1, -1), lab_to_rgb(torch.cat([flat, chroma], dim=1))


def normalize_lab(lab):
    """Raw Lab (B, 3, H, W) -> (lab - LAB_MEAN) / LAB_STD per channel."""
    return (lab - _channels(LAB_MEAN, lab.device)) / _channels(LAB_STD, lab.device)


# CMC's two colour splits (train_CMC.py --view): Lab's L | ab, and YCbCr's Y | CbCr, each normalised as the seed.
COLOUR_SPACES = ("Lab", "YCbCr")
# ITU-R BT.601 as skimage.color.rgb2ycbcr (the seed's RGB2YCbCr): RGB in [0, 1] -> Y in 16..235, Cb, Cr in 16..240.
_YCBCR_FROM_RGB = ((65.481, 128.553, 24.966), (-37.797, -74.203, 112.0), (112.0, -93.786, -18.214))
_YCBCR_OFFSET = (16.0, 128.0, 128.0)
YCBCR_MEAN = (116.151, 121.080, 132.342)
YCBCR_STD = (109.500, 111.855, 111.964)


def rgb_to_ycbcr(x):
    """sRGB images x (B, 3, H, W), uint8 in 0..255 or float in [0, 1], -> float32 YCbCr (B, 3, H, W) (BT.601,
    skimage's rgb2ycbcr)."""
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    with torch.autocast(x.device.type, enabled=False):       # float32 also inside the model's autocast region
        matrix = _constant(_YCBCR_FROM_RGB, x.device)
        return torch.einsum("ck,bkhw->bchw", matrix, x) + _channels(_YCBCR_OFFSET, x.device)


def to_colour_space(rgb, space):
    """sRGB images (B, 3, H, W), uint8 or float in [0, 1] -> their normalised channels in `space` (COLOUR_SPACES),
    float32 (B, 3, H, W): CMC's first view is channel 0 (L, Y), its second channels 1-2 (ab, CbCr)."""
    if space == "Lab":
        return normalize_lab(rgb_to_lab(rgb))
    return (rgb_to_ycbcr(rgb) - _channels(YCBCR_MEAN, rgb.device)) / _channels(YCBCR_STD, rgb.device)


def to_colour_space_(x, space):
    """to_colour_space of float images x in [0, 1], written into x (the batched views' pixel buffers)."""
    if space == "Lab":
        return _lab_(x, _LAB_SCALE, _LAB_SHIFT)
    return x.copy_(to_colour_space(x, space))


def colour_views_to_rgb(first, second, space="Lab"):
    """CMC's normalised views -> pictures (B, 3, S, S) in [0, 1]: the first (L, Y) as grey levels, the second (ab,
    CbCr) as colour at a middle lightness."""
    if space == "Lab":
        return cmc_views_to_rgb(first, second)
    mean, std = _channels(YCBCR_MEAN, first.device), _channels(YCBCR_STD, first.device)
    ycbcr = torch.cat([first, second], dim=1).float() * std + mean
    grey = ((ycbcr[:, :1] - 16) / 219).clamp(0, 1)
    inverse = torch.linalg.inv(torch.tensor(_YCBCR_FROM_RGB, dtype=torch.float64)).float().to(first.device)
    flat = torch.cat([torch.full_like(grey, 126.0), ycbcr[:, 1:]], dim=1) - _channels(_YCBCR_OFFSET, first.device)
    return grey.expand(-1, 3, -1, -1), torch.einsum("ck,bkhw->bchw", inverse, flat).clamp(0, 1)



def _constant(values, device):
    """float32 tensor of the constants `values` (nested tuples) on `device`, made once per device: built from
    Python data or copied from the CPU at every call, it would be a blocking host-to-GPU copy. Callers must not
    modify it. (Where torch.compile traces, a constant of the graph.)"""
    if torch.compiler.is_compiling():
        return torch.tensor(values, dtype=torch.float32, device=device)
    return _cached_constant(values, device)


@functools.lru_cache(maxsize=None)
def _cached_constant(values, device):
    return torch.tensor(values, dtype=torch.float32, device=device)


def _channels(values, device):
    """float32 (1, 3, 1, 1) tensor of three per-channel constants on `device` (_constant)."""
    return _constant(values, device).view(1, 3, 1, 1)


def _coin(n, p, device):
    """n independent draws of a p-coin: bool (n,) on `device`."""
    return torch.rand(n, device=device) < p
