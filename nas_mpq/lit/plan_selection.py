"""Which plan the supernet search returns (SupernetModule's `plan_from`), as a mixin of it.

The derived plan is the argmax, repaired to the budget by a size-priced knapsack (knapsack.py),
of the last epoch's choices [`plan_from: last`; validation runs the argmax plan, no noise], or
(`best_val`) of the epoch whose plan validated best: validation then runs the plan the search
would return at that point (the repaired argmax), so the plan returned is one that was validated;
validations before the warm-up's end (choices not yet moved) do not compete. `probe` then picks
among the start plan and the best-validated plans at equal training (probe.py).
"""
from __future__ import annotations

from nas_mpq.plan import PrecisionPlan
from nas_mpq.search import derive_plan, pin_plan_


class PlanSelection:
    """The plan-keeping half of SupernetModule: it reads the module's net, search space, budget,
    hyperparameters (`plan_from`, `min_fill`, `warmup_fraction`), validation history, `plan_probe`,
    `best_plan`, `_current_plan`, `_validated_plan` and `_progress`."""

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        if self.hparams.plan_from != "last":
            self._validated_plan = self.current_plan()
            self.pin_evaluation(self._validated_plan)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if self.hparams.plan_from == "last":
            return
        self.pin_evaluation(None)
        if self.trainer.sanity_checking or not self.val_history:
            return
        if self._progress >= self.hparams.warmup_fraction:
            epoch, val_ppl = len(self.val_history) - 1, self.val_history[-1]
            self.keep_if_best(self._validated_plan, val_ppl, epoch)
            if self.plan_probe is not None:
                self.plan_probe.validated.append({"epoch": epoch, "val_ppl": val_ppl, "plan": self._validated_plan.to_dict()})

    def current_plan(self) -> PrecisionPlan:
        """The plan the search would return now: the argmax, repaired to the budget (the repair
        prices bits by the probabilities, so it is derived again whenever theta has changed: its
        version counter, no read from the device)."""
        key = tuple(t._version for t in self.arch_parameters())
        if self._current_plan is None or self._current_plan[0] != key:
            self._current_plan = (key, derive_plan(self.net, self.search_space, self.budget, self.hparams.min_fill))
        return self._current_plan[1]

    def pin_evaluation(self, plan: PrecisionPlan | None) -> None:
        """Evaluation forwards run `plan` (None: the argmax again); training samples are unaffected."""
        pin_plan_(self.net, plan)

    def keep_if_best(self, plan: PrecisionPlan, val_ppl: float, epoch: int) -> bool:
        """Keep `plan` when `val_ppl` (its validation perplexity) is the lowest so far; True when kept."""
        if self.best_plan is not None and val_ppl >= self.best_plan["val_ppl"]:
            return False
        self.best_plan = {"epoch": epoch, "val_ppl": val_ppl, "plan": plan.to_dict()}
        return True

    def derive_plan(self) -> PrecisionPlan:
        """The argmax plan (of the best validated epoch with `plan_from: best_val`; the best
        probed candidate with `probe`, probing first if not yet done), repaired to meet the
        budget (plan.extra["repair"] says how far, plan.extra["search_epoch"] which epoch's
        choices it is: its "epoch" None for the start plan)."""
        if self.plan_probe is not None:
            best = min(self.plan_probe.run(self), key=lambda c: c["probe_val_ppl"])
            plan = PrecisionPlan.from_dict(best["plan"])
            plan.extra["search_epoch"] = {k: best[k] for k in ("epoch", "val_ppl", "probe_val_ppl")}
            return plan
        best = self.best_plan if self.hparams.plan_from == "best_val" else None
        if best is None:
            plan = derive_plan(self.net, self.search_space, self.budget, self.hparams.min_fill)
            plan.extra["search_epoch"] = {"epoch": len(self.val_history) - 1,
                                          "val_ppl": self.val_history[-1] if self.val_history else None}
            return plan
        plan = PrecisionPlan.from_dict(best["plan"])
        plan.extra["search_epoch"] = {"epoch": best["epoch"], "val_ppl": best["val_ppl"]}
        return plan
