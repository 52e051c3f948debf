"""The training loop of :class:`~alphaforge.models.sequence.SequenceForecaster` and its losses.

MSE (regression, on the standardised target) or BCE-with-logits (classification), or with
``objective: ic`` minus the mean per-timestamp Pearson IC (:func:`ic_loss`) over batches of whole
timestamps; AdamW, gradient-norm clipping, mixed precision on CUDA, early stopping on the inner
validation slice with the best weights restored.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from alphaforge.models.base import Task
from alphaforge.models.params import SequenceParams
from alphaforge.models.sequence.nets import _amp_dtype
from alphaforge.models.sequence.windows import timestamp_batches, window_batch

log = logging.getLogger("alphaforge.models.sequence")  # the logger name from before the split


def per_timestamp_ic(prediction: torch.Tensor, target: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """The Pearson correlation of ``prediction`` and ``target`` among the rows of each group (``groups``: 0..G-1,
    one per timestamp), shape (G,): each group is centred and scaled with its own rows only. NaN for a group
    with fewer than two rows or a constant side."""
    n_groups = int(groups.max()) + 1 if groups.numel() else 0
    count = torch.zeros(n_groups, dtype=prediction.dtype, device=prediction.device).index_add_(
        0, groups, torch.ones_like(prediction))

    def centred(x: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(n_groups, dtype=x.dtype, device=x.device).index_add_(0, groups, x)
        return x - (total / count)[groups]

    def group_sum(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(n_groups, dtype=x.dtype, device=x.device).index_add_(0, groups, x)

    p, t = centred(prediction), centred(target.to(prediction.dtype))
    covariance, p_var, t_var = group_sum(p * t), group_sum(p * p), group_sum(t * t)
    ic = covariance / torch.sqrt((p_var * t_var).clamp_min(1e-24))  # clamped inside: no inf gradient at 0
    return torch.where((count >= 2) & (p_var > 0) & (t_var > 0), ic, torch.full_like(ic, float("nan")))


def ic_loss(prediction: torch.Tensor, target: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """``objective: ic``: minus the mean per-timestamp IC of the groups where it exists (0, still differentiable,
    when none does)."""
    ic = per_timestamp_ic(prediction, target, groups)
    known = ~torch.isnan(ic)
    if not bool(known.any()):
        return prediction.sum() * 0.0
    return -ic[known].mean()


class _TrainingLoop:
    """The fit loop and loss evaluation, mixed into :class:`~alphaforge.models.sequence.SequenceForecaster`
    (which sets ``params``, ``task`` and ``family``)."""

    family: ClassVar[str]
    params: SequenceParams
    task: Task

    def _split_validation(self, candidates: np.ndarray, timestamps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(inner-train rows, validation rows): validation = the last share of candidates by timestamp."""
        fraction = self.params.validation_fraction
        if fraction == 0:
            return candidates, candidates[:0]
        candidate_times = timestamps[candidates]
        ordered = np.sort(candidate_times)
        cutoff = ordered[min(int(len(ordered) * (1 - fraction)), len(ordered) - 1)]
        in_validation = candidate_times >= cutoff
        if in_validation.all():
            raise ValueError(
                f"validation_fraction={fraction} leaves no training rows: the trainable fit rows span too few "
                "timestamps; give more rows or lower validation_fraction"
            )
        return candidates[~in_validation], candidates[in_validation]

    def _train(
        self,
        network: nn.Module,
        windows: np.ndarray,
        target: np.ndarray,
        train_rows: np.ndarray,
        validation_rows: np.ndarray,
        device: torch.device,
        timestamps: np.ndarray | None = None,
    ) -> tuple[list[dict[str, float]], int]:
        params = self.params
        by_timestamp = params.objective == "ic"
        if by_timestamp and timestamps is None:
            raise ValueError("objective 'ic' needs each row's timestamp")
        rng = np.random.default_rng(params.seed)
        amp_dtype = _amp_dtype(device)
        grad_scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        optimizer = torch.optim.AdamW(
            network.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay
        )
        loss_function = self._loss_function()
        history: list[dict[str, float]] = []
        best_loss, best_epoch, best_state = math.inf, 0, None
        stale_epochs = 0
        for epoch in range(1, params.max_epochs + 1):
            started = time.perf_counter()
            rows = train_rows
            if params.max_train_windows is not None and len(rows) > params.max_train_windows:
                rows = rng.choice(rows, size=params.max_train_windows, replace=False)
            if by_timestamp:
                batches = timestamp_batches(rows, timestamps, params.batch_size, rng)
            else:
                rows = rng.permutation(rows)
                batches = [rows[start : start + params.batch_size] for start in range(0, len(rows), params.batch_size)]
            network.train()
            total, count = 0.0, 0
            for batch_rows in batches:
                x, y = self._batch(windows, target, batch_rows, device)
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    output = network(x).float()
                    if by_timestamp:
                        groups = torch.from_numpy(np.unique(timestamps[batch_rows], return_inverse=True)[1]).to(device)
                        loss = ic_loss(output, y, groups)
                    else:
                        loss = loss_function(output, y)
                optimizer.zero_grad(set_to_none=True)
                grad_scaler.scale(loss).backward()
                if params.grad_clip is not None:
                    grad_scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(network.parameters(), params.grad_clip)
                grad_scaler.step(optimizer)
                grad_scaler.update()
                total += float(loss.detach()) * len(batch_rows)
                count += len(batch_rows)
            train_loss = total / count
            if not len(validation_rows):
                validation_loss = math.nan
            elif by_timestamp:
                validation_loss = self._evaluate_ic_loss(network, windows, target, validation_rows, device, timestamps)
            else:
                validation_loss = self._evaluate_loss(network, windows, target, validation_rows, device, loss_function)
            seconds = time.perf_counter() - started
            history.append(
                {"epoch": epoch, "train_loss": train_loss, "validation_loss": validation_loss, "seconds": seconds}
            )
            log.info(
                "%s epoch %d/%d: train loss %.5f, validation loss %.5f, %.2fs",
                self.family, epoch, params.max_epochs, train_loss, validation_loss, seconds,
            )
            if not len(validation_rows):
                best_epoch = epoch
                continue
            if validation_loss < best_loss:
                best_loss, best_epoch, stale_epochs = validation_loss, epoch, 0
                best_state = copy.deepcopy(network.state_dict())
            else:
                stale_epochs += 1
                if stale_epochs >= params.patience:
                    log.info("%s: early stop after epoch %d, best epoch %d", self.family, epoch, best_epoch)
                    break
        if best_state is not None:
            network.load_state_dict(best_state)
        return history, best_epoch

    def _loss_function(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        if self.task == "classification":
            return nn.functional.binary_cross_entropy_with_logits
        return nn.functional.mse_loss

    def _batch(
        self, windows: np.ndarray, target: np.ndarray | None, rows: np.ndarray, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(window_batch(windows, rows, self.params.lookback)).to(device, non_blocking=True)
        y = torch.from_numpy(target[rows]).to(device, non_blocking=True) if target is not None else x.new_empty(0)
        return x, y

    @torch.no_grad()
    def _evaluate_loss(
        self,
        network: nn.Module,
        windows: np.ndarray,
        target: np.ndarray,
        rows: np.ndarray,
        device: torch.device,
        loss_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> float:
        network.eval()
        amp_dtype = _amp_dtype(device)
        total = 0.0
        for start in range(0, len(rows), self._predict_batch_size):
            batch_rows = rows[start : start + self._predict_batch_size]
            x, y = self._batch(windows, target, batch_rows, device)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                output = network(x).float()
            total += float(loss_function(output, y, reduction="sum"))  # type: ignore[call-arg]
        return total / len(rows)

    @torch.no_grad()
    def _evaluate_ic_loss(self, network: nn.Module, windows: np.ndarray, target: np.ndarray, rows: np.ndarray,
                          device: torch.device, timestamps: np.ndarray) -> float:
        """Minus the mean per-timestamp IC over the validation rows, all forecasts first (whole timestamps)."""
        network.eval()
        outputs = []
        for start in range(0, len(rows), self._predict_batch_size):
            x, _ = self._batch(windows, None, rows[start : start + self._predict_batch_size], device)
            outputs.append(network(x).float().cpu())
        groups = torch.from_numpy(np.unique(timestamps[rows], return_inverse=True)[1])
        return float(ic_loss(torch.cat(outputs), torch.from_numpy(target[rows]), groups))

    @property
    def _predict_batch_size(self) -> int:
        return max(self.params.batch_size, 4096)
