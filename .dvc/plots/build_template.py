"""Build `.dvc/plots/template.html`: DVC's plot page with vega, vega-lite and vega-embed inlined.

Why: DVC's default page loads these three libraries from a CDN, so offline every vega plot of
`dvc plots show` renders at zero height with no error. `.dvc/config` points `plots.html_template`
at the page this script writes; the libraries are inlined (not linked) so the page works from any
`dvc plots show -o DIR` and can be copied or mailed as one file. Versions are the ones dvc-render
itself loads (dvc_render/vega.py), so its vega-lite templates render as upstream intends.

Run from the repository root (needs `npm` and the npm registry):
    python .dvc/plots/build_template.py            # npm pack the pinned versions into a temp dir
    python .dvc/plots/build_template.py DIR        # or use DIR/<name>-<version>.tgz already there
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGES = (("vega", "5.20.2", "build/vega.min.js"),
            ("vega-lite", "5.2.0", "build/vega-lite.min.js"),
            ("vega-embed", "6.18.2", "build/vega-embed.min.js"))
HERE = Path(__file__).resolve().parent
OUT = HERE / "template.html"
# DVC fills {plot_divs} (and {refresh_tag}); there is deliberately no {scripts}: that placeholder is
# where DVC would add its CDN <script src=...> tags.
PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {refresh_tag}
    <title>DVC Plot</title>
    <!-- vega, vega-lite and vega-embed inlined for offline use by .dvc/plots/build_template.py;
         BSD-3-Clause, licences in .dvc/plots/LICENSES.md -->
%s
    <script>
    /* lfp: DVC hands vegaEmbed an empty spec {} when a plot's file has no rows (e.g. Table 6
       samples of a task with no related features); vega then draws nothing, at zero height, with
       no message. Say so in the page instead. */
    (function () {
        var embed = window.vegaEmbed;
        function checked(el, spec, opts) {
            var values = spec && spec.data && spec.data.values;
            if (!spec || Object.keys(spec).length === 0 || (Array.isArray(values) && values.length === 0)) {
                var box = document.querySelector(el);
                var note = document.createElement("p");
                note.className = "lfp-empty-plot";
                note.textContent = "No rows to plot: " + box.id + " (its data file has a header only).";
                box.appendChild(note);
                return Promise.resolve(null);
            }
            return embed(el, spec, opts);
        }
        window.vegaEmbed = Object.assign(checked, embed);
    })();
    </script>
    <style>
        .lfp-empty-plot { border: 1px dashed #999; padding: 1em; width: 300px; font-family: sans-serif; }
        table { border-spacing: 15px; }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def library(tgz: Path, name: str, version: str, member: str) -> str:
    """One minified library as an inline <script>, without its source-map comment."""
    with tarfile.open(tgz) as tar:
        source = tar.extractfile(f"package/{member}")
        if source is None:
            sys.exit(f"{tgz}: no package/{member}")
        code = source.read().decode("utf-8")
    code = "\n".join(line for line in code.splitlines() if not line.startswith("//# sourceMappingURL="))
    for bad in ("</script", "<!--", "{plot_divs}", "{scripts}", "{refresh_tag}"):
        if bad in code:
            sys.exit(f"{tgz}: {member} contains {bad!r}, which cannot be inlined in the template")
    return f"    <script>/* {name}@{version} (BSD-3-Clause) */\n{code}\n    </script>"


def main(argv: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(argv[0]) if argv else Path(tmp)
        if not argv:
            specs = [f"{n}@{v}" for n, v, _ in PACKAGES]
            subprocess.run(["npm", "pack", "--silent", *specs], cwd=where, check=True, stdout=subprocess.DEVNULL)
        scripts = "\n".join(library(where / f"{n}-{v}.tgz", n, v, m) for n, v, m in PACKAGES)
        page = PAGE % scripts
        tmp_out = OUT.with_name(f".{OUT.name}.tmp")
        tmp_out.write_text(page, encoding="utf-8")
        os.replace(tmp_out, OUT)
    print(f"{OUT}: {len(page.encode()) / 1e6:.2f} MB")


if __name__ == "__main__":
    main(sys.argv[1:])
