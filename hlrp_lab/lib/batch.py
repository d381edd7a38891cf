"""How the global batch splits over ranks and accumulation steps (no torch: ``spec check`` asks too)."""

from hlrp_lab.lib.errors import SpecError


def fitting_ranks(batch_size: int, grad_accum: int, ranks: int) -> int:
    """The most ranks, at most ``ranks``, over which the global batch splits (1 always does if grad_accum does)."""
    return next(r for r in range(ranks, 0, -1) if batch_size % (grad_accum * r) == 0)


def micro_batch(batch_size: int, grad_accum: int, ranks: int) -> int:
    """Pairs per rank per micro-batch: ``data.batch_size`` is the global batch of one optimizer step."""
    parts = grad_accum * ranks
    if batch_size % parts:
        fit = max(parts, batch_size // parts * parts)
        raise SpecError(
            f"data.batch_size: {batch_size} does not split over {ranks} rank(s) x train.grad_accum {grad_accum}; "
            f"use a multiple of {parts}, e.g. -s data.batch_size={fit}"
        )
    return batch_size // parts
