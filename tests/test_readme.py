"The README is generated from nbs/index.ipynb (tools/readme.py): it is up to date, and the generator keeps what it should."
import importlib.util, json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location('readme', ROOT/'tools'/'readme.py')
readme = importlib.util.module_from_spec(spec)
spec.loader.exec_module(readme)


def test_readme_is_what_the_index_gives():
    assert (ROOT/'README.md').read_text(encoding='utf-8') == readme.readme_text()
    assert readme.main(['--check']) == 0


def test_generator_keeps_markdown_and_fences_code(tmp_path):
    cell = lambda kind, src: {'cell_type': kind, 'metadata': {}, 'source': src, **({'outputs': [], 'execution_count': None} if kind == 'code' else {})}
    nb = {'cells': [cell('markdown', '# T\n\n> s'), cell('code', '#| hide\nimport os'), cell('code', 'print(1)\n'),
                    cell('markdown', '## A\n\ntext')], 'metadata': {}, 'nbformat': 4, 'nbformat_minor': 5}
    (tmp_path/'index.ipynb').write_text(json.dumps(nb))
    text = readme.readme_text(tmp_path/'index.ipynb')
    assert text == readme.HEADER + '# T\n\n> s\n\n```python\nprint(1)\n```\n\n## A\n\ntext\n'
