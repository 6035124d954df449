"""The Conformer's depthwise 1-d convolution, with its backward pass written out.

:func:`depthwise_conv1d` computes the convolution as ``k`` shifted multiply-adds,
which XLA fuses into one pass (on CPU ten times faster than a grouped
convolution). Its backward pass is written out, because autodiff transposes the
shifted slices into ``k`` scatter-adds: the input gradient is the same
correlation with the flipped kernel and swapped padding; the kernel gradient is
the correlation of input and output gradient at ``k`` lags, done on CPU as one
FFT cross-correlation (``k`` column reductions over batch and time run at a few
GB/s there: the convolution module's forward + backward went from 304 to 259 ms,
README configuration) and elsewhere as ``k`` fused reductions.

(Writing the whole GLU -> conv -> Swish chain as one custom-VJP op saved another
7% of the module in isolation but cost 0.2 s per training step of
``configs/base.py``, whose layers are scanned; not done.)

Shapes: ``b`` batch, ``n`` frames, ``c`` channels, ``k`` kernel taps;
``padding = (left, right)`` with ``left + right = k - 1``.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def shifted_sum(x: jax.Array, kernel: jax.Array, padding: tuple[int, int]) -> jax.Array:
    """``sum_j pad(x)[:, t + j] * kernel[j]``: x ``(b, n, c)``, kernel ``(k, c)`` -> ``(b, n, c)``."""
    n, k = x.shape[1], kernel.shape[0]
    padded = jnp.pad(x, ((0, 0), padding, (0, 0)))
    return sum(padded[:, j:j + n, :] * kernel[j] for j in range(k))


def fft_size(minimum: int) -> int:
    """The smallest 2^a 3^b 5^c >= minimum: FFT lengths that pocketfft runs fastest."""
    size = minimum
    while True:
        rest = size
        for prime in (2, 3, 5):
            while rest % prime == 0:
                rest //= prime
        if rest == 1:
            return size
        size += 1


def kernel_gradient_by_slices(x, grad, padding, k):
    """``grad_kernel[j, c] = sum_{b,t} pad(x)[b, t + j, c] * grad[b, t, c]`` as ``k`` reductions, float32."""
    n = x.shape[1]
    padded = jnp.pad(x, ((0, 0), padding, (0, 0)))
    return jnp.stack([jnp.sum(padded[:, j:j + n, :] * grad, axis=(0, 1), dtype=jnp.float32) for j in range(k)])


def kernel_gradient_by_fft(x, grad, padding, k):
    """The same as :func:`kernel_gradient_by_slices`, as one FFT cross-correlation, float32."""
    # The correlation of x and grad at lags -left .. k-1-left, summed over the batch. A length
    # L >= n + max(left, right) keeps the circular correlation free of wrap-around; negative lags
    # sit at the end of its output.
    n, (left, right) = x.shape[1], padding
    length = fft_size(n + max(left, right))
    spectrum = jnp.fft.rfft(x.astype(jnp.float32), length, axis=1)
    spectrum = spectrum * jnp.conj(jnp.fft.rfft(grad.astype(jnp.float32), length, axis=1))
    correlation = jnp.fft.irfft(jnp.sum(spectrum, axis=0), length, axis=0)                  # (L, c)
    return jnp.concatenate([correlation[length - left:], correlation[:k - left]], axis=0)


def kernel_gradient(x, grad, padding, k):
    """The kernel gradient ``(k, c)`` float32: by FFT on CPU, by reductions elsewhere."""
    # platform_dependent lowers both and keeps the target's; both branches return float32.
    return jax.lax.platform_dependent(
        x, grad, cpu=functools.partial(kernel_gradient_by_fft, padding=padding, k=k),
        default=functools.partial(kernel_gradient_by_slices, padding=padding, k=k))


def _input_gradient(grad, kernel, padding):
    left, right = padding
    return shifted_sum(grad, kernel[::-1], (right, left))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def depthwise_conv1d(x: jax.Array, kernel: jax.Array, bias: jax.Array, padding: tuple[int, int]) -> jax.Array:
    """Depthwise 1-d cross-correlation: x ``(b, n, c)``, kernel ``(k, c)``, bias ``(c,)`` -> ``(b, n, c)``."""
    return shifted_sum(x, kernel, padding) + bias


def _depthwise_forward(x, kernel, bias, padding):
    return depthwise_conv1d(x, kernel, bias, padding), (x, kernel)


def _depthwise_backward(padding, residuals, grad):
    x, kernel = residuals
    grad_kernel = kernel_gradient(x, grad, padding, kernel.shape[0])
    return (_input_gradient(grad, kernel, padding), grad_kernel.astype(kernel.dtype),
            jnp.sum(grad, axis=(0, 1)))


depthwise_conv1d.defvjp(_depthwise_forward, _depthwise_backward)
