"""`lipbench report`: one self-contained HTML file whose embedded figures are real, non-empty PNGs."""

from __future__ import annotations

import base64
import io
import re
import struct
from pathlib import Path

import matplotlib.image
import pytest
from builders import CLAIMS, save_run, synthetic_outcome

from lipbench.cli import main
from lipbench.report import write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def embedded_pngs(html: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)]


def assert_real_png(data: bytes) -> None:
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 100 and height > 100
    pixels = matplotlib.image.imread(io.BytesIO(data), format="png")
    assert pixels.shape[:2] == (height, width) and pixels.std() > 0.01  # something is drawn


@pytest.fixture
def finished_run(tmp_path: Path) -> Path:
    outcomes = [synthetic_outcome(tmp_path / "coll", name) for name in CLAIMS]
    return save_run(tmp_path / "run", outcomes, tmp_path / "baselines")


def test_report_embeds_one_real_png_per_claim(finished_run: Path, tmp_path: Path, wide_console) -> None:
    assert main(["report", str(finished_run), "--out", str(tmp_path / "report")]) == 0
    html = (tmp_path / "report" / "report.html").read_text()
    images = embedded_pngs(html)
    assert len(images) == len(CLAIMS)
    for data in images:
        assert_real_png(data)
    assert not re.search(r"(src|href)=['\"]?(https?:|//|[\w./-]+\.(png|css|js))", html)  # nothing outside the file
    sections = {re.search(r"coll / (\w+) \[quick\]", sec).group(1): sec for sec in html.split("<section")[1:]}
    assert sorted(sections) == sorted(CLAIMS)
    for section in sections.values():
        assert ">NEW</span>" in section and "no baseline at" in section
    assert "Within-init variance of final K across sampling seeds" in html


def test_report_redraws_a_missing_figure_and_shows_the_comparison(finished_run: Path, tmp_path: Path) -> None:
    from lipbench.results import find_results

    folders = find_results(finished_run)
    for folder in folders:
        (folder / "figure.png").unlink()
    path = write_report(finished_run, tmp_path / "out")
    images = embedded_pngs(path.read_text())
    assert len(images) == len(CLAIMS)
    for data in images:
        assert_real_png(data)

    weaker = synthetic_outcome(tmp_path / "coll", "label_noise", strength=0.5)
    baselines = tmp_path / "baselines"
    main(["baseline", "update", str(tmp_path / "coll"), "--from-run", str(finished_run), "--baselines", str(baselines)])
    again = save_run(tmp_path / "again", [weaker], baselines)
    html = write_report(again, tmp_path / "out2").read_text()
    assert ">REGRESSED</span>" in html and "log_ratio_extreme_values" in html and "regressed" in html


def test_report_embeds_the_sde_decomposition_of_probed_claims(finished_run: Path, tmp_path: Path) -> None:
    from lipbench.results import find_results

    folder = find_results(finished_run)[0]
    (folder / "sde_decomposition.png").write_bytes((folder / "figure.png").read_bytes())
    html = write_report(finished_run, tmp_path / "out").read_text()
    assert len(embedded_pngs(html)) == len(CLAIMS) + 1
    assert html.count("alt='SDE decomposition of ") == 1
