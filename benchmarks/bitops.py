"""A BitOps budget on the digits CNN: weight and activation bit-widths searched together against
uniform weight/activation plans with the same BitOps, each finalized the same way (STE).

The budget is FP32's BitOps / --ratio (default 32: 32 bit-products per MAC, e.g. 4-bit weights x
8-bit inputs). Stages run through the `nas-mpq` CLI under --run_dir, reusing finished ones:

  fp32/            pretrain                                  (<configs>/pretrain.yaml)
  search-bitops/   search, activation candidates {2, 4, 8, 32}, from fp32
  searched/        finalize the searched plan
  w<W>a<A>/        finalize the uniform plan (W-bit weights, A-bit layer inputs), for each pair
                   with W x A = 1024 / ratio

Prints JSON.

    python benchmarks/bitops.py [--ratio 32]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from nas_mpq.plan import Budget
from nas_mpq.search import prepare_search_, search_groups, uniform_plan
from quality import stage
from search_spaces.cnn import ResNetCNN, cnn_space

ACTIVATION_CANDIDATES = [2, 4, 8, 32]
KEYS = ("test_acc", "test_ppl", "val_ppl", "avg_bits", "compression", "epochs_to_best_val")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="configs/digits_cnn")
    ap.add_argument("--run_dir", default="runs/bench-bitops")
    ap.add_argument("--ratio", type=float, default=32.0, help="the budget is FP32 BitOps / ratio")
    args = ap.parse_args()
    cfg, root = Path(args.configs), Path(args.run_dir)
    timings: dict[str, float] = {}
    fp32 = stage(["pretrain", "--config", str(cfg / "pretrain.yaml")], root / "fp32", "model.ckpt", timings)
    init = ["--init_ckpt", str(root / "fp32" / "model.ckpt")]
    net_args = yaml.safe_load((cfg / "search.yaml").read_text())["model"]["net"]["init_args"]
    probe = prepare_search_(ResNetCNN(**net_args), cnn_space(candidates=[32]))
    fp32_bitops = Budget("bitops", 1.0).measure([g.plan for g in search_groups(probe)], 0)
    budget = Budget("bitops", fp32_bitops / args.ratio)
    search = stage(["search", "--config", str(cfg / "search.yaml"), *init, "--model.budget.kind", "bitops",
                    "--model.budget.value", str(budget.value),
                    "--model.space.activation_candidates", json.dumps(ACTIVATION_CANDIDATES)],
                   root / "search-bitops", "plan.json", timings)
    finalize = ["finalize", "--config", str(cfg / "finalize.yaml"), *init]
    runs = {"searched": root / "search-bitops" / "plan.json"}
    space = cnn_space(activation_candidates=ACTIVATION_CANDIDATES)
    for w in (1, 2, 4, 8):
        a = 1024 / args.ratio / w
        if a in ACTIVATION_CANDIDATES:
            plan = uniform_plan(ResNetCNN(**net_args), space, w, act_bits=int(a))
            plan.budget = budget
            path = root / f"w{w}a{int(a)}" / "plan.json"
            if not path.exists():
                plan.save(path)
            runs[f"w{w}a{int(a)}"] = path
    out: dict = {"configs": str(cfg), "fp32": {k: fp32[k] for k in KEYS if k in fp32},
                 "budget": {"kind": "bitops", "value": budget.value, "fp32_bitops": fp32_bitops, "ratio": args.ratio},
                 "search": {"activation_bits": search.get("activation_bits"), "avg_bits": search["avg_bits"]}}
    for name, plan_path in runs.items():
        m = stage([*finalize, "--plan", str(plan_path)], root / name, "model.safetensors", timings)
        out[name] = {k: m[k] for k in KEYS if k in m}
    out["seconds"] = timings
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
