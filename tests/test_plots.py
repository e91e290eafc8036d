"""The plots write PNGs without touching the matplotlib backend of the process that uses them."""
import os
import subprocess
import sys
import textwrap

from test_plan import hand_plan

PLOT_EVERYTHING = textwrap.dedent("""
    import sys
    import matplotlib
    from test_plan import hand_plan
    before = matplotlib.get_backend()
    from nas_mpq import plots
    out = sys.argv[1]
    plots.plot_plan(hand_plan(), out + "/plan.png")
    plots.plot_stage_ppl({"fp32": 80.0, "mixed": 95.0}, out + "/ppl.png")
    plots.plot_sensitivity({"a": {1: 2.0, 2: 0.5}, "b": {1: 1.0, 2: 0.1}}, out + "/sensitivity.png", "kl")
    plots.plot_pareto([[90.0, 1.0], [80.0, 2.0], [85.0, 3.0]], [[90.0, 1.0], [80.0, 2.0]],
                      ["val_ppl", "size_mb"], out + "/pareto.png")
    print(before, matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
""")


def test_importing_and_plotting_leaves_the_backend_alone(tmp_path):
    """In a fresh process whose backend is svg (not the Agg the PNGs are drawn with), importing
    the plots and drawing every figure neither switches the backend nor loads pyplot."""
    tests = os.path.dirname(__file__)
    env = {**os.environ, "MPLBACKEND": "svg", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", PLOT_EVERYTHING, str(tmp_path)], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["svg", "svg", "False"]
    for name in ("plan", "ppl", "sensitivity", "pareto"):
        assert (tmp_path / f"{name}.png").read_bytes().startswith(b"\x89PNG"), name


def test_plots_in_this_process_are_pngs(tmp_path):
    from nas_mpq.plots import plot_plan
    path = plot_plan(hand_plan(), tmp_path / "plan.png")
    assert path.read_bytes().startswith(b"\x89PNG") and list(tmp_path.iterdir()) == [path]
