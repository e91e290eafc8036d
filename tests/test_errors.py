"""Bad input is reported in one line, `nas-mpq <stage>: error: <message>`, with exit status 2;
--debug or NAS_MPQ_DEBUG=1 shows the exception with its traceback instead."""
import re

import pytest

from nas_mpq.cli import main


@pytest.fixture
def one_line(monkeypatch, capsys):
    """Run `nas-mpq ARGS` as a user does (no debugging); returns (exit status, stderr)."""
    monkeypatch.delenv("NAS_MPQ_DEBUG")

    def run(*args: str) -> tuple[int, str]:
        capsys.readouterr()
        status = main([str(a) for a in args])
        return status, capsys.readouterr().err
    return run


def _corpus(folder, train: bytes):
    folder.mkdir()
    (folder / "train.txt").write_bytes(train)
    for split in ("valid", "test"):
        (folder / f"{split}.txt").write_text("a b c\n")
    return folder


CASES = {
    "yaml syntax": (lambda cfg, tmp: ["search", "--config", _bad_yaml(tmp)],
                    r"nas-mpq search: error: config file \S*bad.yaml is not valid YAML: line 3, column 1: "
                    r"expected ',' or '\]', but got '<stream end>' \(while parsing a flow sequence at line 2"),
    "yaml syntax, run": (lambda cfg, tmp: ["run", "--config", _bad_yaml(tmp)],
                         r"nas-mpq run: error: config file \S*bad.yaml is not valid YAML: line 3"),
    "config not utf-8": (lambda cfg, tmp: ["search", "--config", _write(tmp / "latin1.yaml", b"seed: 0 # \xe9\n")],
                         r"nas-mpq search: error: config file \S*latin1.yaml is not UTF-8 text "
                         r"\(byte 10: invalid continuation byte\)"),
    "bad value": (lambda cfg, tmp: ["search", "--config", cfg, "--model.space.candidates", "[1, 5]"],
                  r"nas-mpq search: error: unknown bit-width 5; valid bit-widths are \[0, 1, 2, 3, 4, 8, 16, 32\]"),
    "invalid utf-8": (lambda cfg, tmp: ["pretrain", "--config", cfg, "--data.corpus",
                                        _corpus(tmp / "c", b"ok\n\xff\n")],
                      r"nas-mpq pretrain: error: \S*c/train.txt is not UTF-8 text \(byte 3: invalid start byte\)"),
    "empty train.txt": (lambda cfg, tmp: ["pretrain", "--config", cfg, "--data.corpus", _corpus(tmp / "c", b"")],
                        r"nas-mpq pretrain: error: \S*c/train.txt is empty; every split"),
    "missing plan": (lambda cfg, tmp: ["finalize", "--config", cfg, "--plan", tmp / "nope.json"],
                     r"nas-mpq finalize: error: plan file \S*nope.json does not exist"),
    "finished run": (lambda cfg, tmp: ["run", "--config", cfg, "--run_dir", _finished(tmp)],
                     r"nas-mpq run: error: \S*done holds a finished run \(report.json\); refusing to overwrite it"),
    "bare resume": (lambda cfg, tmp: ["run", "--config", cfg, "--resume", "last"],
                    r"nas-mpq run: error: --resume needs a stage: a run resumes every interrupted stage by itself; .*"
                    r"--<stage>.resume CKPT"),
}


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _bad_yaml(tmp):
    (tmp / "bad.yaml").write_text("trainer:\n  max_epochs: [1\n")
    return tmp / "bad.yaml"


def _finished(tmp):
    (tmp / "done").mkdir()
    (tmp / "done" / "report.json").write_text("{}")
    return tmp / "done"


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_with_status_2(case, config, tmp_path, one_line):
    make_args, expected = CASES[case]
    args = make_args(config, tmp_path)
    if "--run_dir" not in args:
        args += ["--run_dir", tmp_path / "run"]
    status, err = one_line(*args)
    lines = [ln for ln in err.splitlines() if ln.startswith("nas-mpq")]
    assert status == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert re.fullmatch(expected + ".*", lines[0]), lines[0]


def test_debug_shows_the_exception(config, tmp_path, one_line, monkeypatch):
    args = ["search", "--config", str(config), "--run_dir", str(tmp_path), "--model.space.candidates", "[1, 5]"]
    with pytest.raises(ValueError, match="unknown bit-width 5"):
        main([*args, "--debug"])
    monkeypatch.setenv("NAS_MPQ_DEBUG", "1")
    with pytest.raises(ValueError, match="unknown bit-width 5"):
        main(args)


def test_help_and_parser_errors_keep_their_behaviour(config, tmp_path, one_line, capsys):
    with pytest.raises(SystemExit) as e:
        main(["search", "--help"])
    assert e.value.code == 0 and "--run_dir" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:  # jsonargparse prints the usage and the error itself
        main(["search", "--config", str(config), "--run_dir", str(tmp_path), "--model.no_such_key", "1"])
    assert e.value.code == 2 and "no_such_key" in capsys.readouterr().err
