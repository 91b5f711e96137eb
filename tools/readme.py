"""Write README.md from nbs/index.ipynb (nbdev's convention: the index notebook is the README's source).

nbdev's own `nbdev_readme` renders with Quarto, which cannot be installed on these machines; this does the same
for what the index holds: markdown cells as they are, code cells as fenced Python blocks (their outputs are not
copied: a figure the README shows is a committed image the markdown links to). `tools/check_sync.sh` runs it and
fails when README.md is out of date.

Usage: python tools/readme.py            (rewrite README.md)
       python tools/readme.py --check    (exit 1 when README.md differs from what the notebook gives)
"""
import json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADER = '<!-- Generated from nbs/index.ipynb by tools/readme.py: edit the notebook, not this file. -->\n\n'


def readme_text(nb_path:Path=ROOT/'nbs'/'index.ipynb') -> str:
    "The README that the index notebook gives."
    cells = json.loads(nb_path.read_text(encoding='utf-8'))['cells']
    parts = []
    for c in cells:
        src = ''.join(c['source']).strip('\n')
        if not src or src.startswith('#| hide'): continue
        parts.append(src if c['cell_type'] == 'markdown' else f'```python\n{src}\n```')
    return HEADER + '\n\n'.join(parts) + '\n'


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    text, out = readme_text(), ROOT/'README.md'
    if '--check' in argv:
        same = out.is_file() and out.read_text(encoding='utf-8') == text
        if not same: print('readme: README.md is not what nbs/index.ipynb gives; run python tools/readme.py', file=sys.stderr)
        return 0 if same else 1
    out.write_text(text, encoding='utf-8')
    return 0


if __name__ == '__main__':
    sys.exit(main())
