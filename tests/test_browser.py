"""The real-browser check of the widget panels.

A notebook that builds every panel (and runs a tiny federated run in the run panel) is executed with nbclient, which
stores the widget state in the notebook's metadata. nbconvert renders it to HTML with the widget views embedded; the
widget JavaScript (`@jupyter-widgets/html-manager`'s standalone `embed.js`, fetched with `npm pack` from the npm
registry, or taken from $FEDHELLO_WIDGET_JS) is served with the page from 127.0.0.1, since there is no CDN here.
Before the browser opens it, the page is checked to load nothing from elsewhere: no `<script src>`, `<link href>`
(stylesheets, icons, preloads), `<img>`/`<iframe>`/`<source>` src or CSS `url()`/`@import` off 127.0.0.1.
Headless Chromium (Debian's package) opens the page with every host but 127.0.0.1 unresolvable, dumps the DOM after
the scripts ran, and takes a screenshot. The test asserts that the panels rendered: their controls (sliders,
dropdowns, buttons, text areas, a progress bar), their status lines and their figures.

Skipped only when chromium is not installed (`apt-get install -y chromium`). The screenshot (`panels.png`), the DOM
and the HTML are written to the test's temporary folder and copied to $FEDHELLO_ARTIFACTS when that is set, which
`tools/test.sh` does (default `runs/test-artifacts/` in the repository, git-ignored), so after a test run the
screenshot is at `runs/test-artifacts/panels.png`; the test prints where it kept them, also when it passes.
"""
import os, re, shutil, subprocess, sys, tarfile, threading, time
from collections import Counter
from functools import partial
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
import pytest

CHROMIUM = next((p for p in (shutil.which('chromium'), shutil.which('chromium-browser'), '/usr/bin/chromium')
                 if p and Path(p).exists()), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason='chromium is not installed (apt-get install -y chromium)')

HTML_MANAGER = '@jupyter-widgets/html-manager@^1.0.0'    # the embed bundle of ipywidgets 8 (controls 5)
STATE_MIME = 'application/vnd.jupyter.widget-state+json'
ROOT = Path(__file__).resolve().parents[1]

CELLS = [
    "import os\nos.environ.setdefault('HF_HUB_OFFLINE', '1')\nfrom fedhello_nb.widgets import *",
    "AllocationExplorer(memory_model='tiny-bert', debounce=0)",
    "pe = PartitionExplorer(scheme='pathological', classes_per_client=3, num_clients=12, debounce=0)\npe",
    "GroupingExplorer(pe, num_groups=3, debounce=0)",
    "MemoryExplorer('tiny-bert', batch=16, seq_len=64, budget='40MB', debounce=0)",
    "tiny = dict(model={{'name': 'tiny-bert'}}, data={{'max_train': 400, 'max_test': 120}},\n"
    "            partition={{'scheme': 'pathological', 'classes_per_client': 4}}, clients={{'num_clients': 8, 'per_round': 4}},\n"
    "            allocation={{'strategy': 'rgd'}}, train={{'rounds': 3, 'local_steps': 2, 'batch_size': 8, 'lr': 1e-2}})\n"
    "rp = RunPanel(tiny, output__dir={run_dir!r})\n"
    "rp.start(); assert rp.wait(300) and rp.run_error is None, rp.run_error\n"
    "rp",
]
NUM_PANELS = 5
NUM_FIGURES = 7      # allocation 2 (maps and counts, memory), partition 1, grouping 2, memory 1, run 1


def _chromium(*args, user_data:Path, timeout:int=120) -> subprocess.CompletedProcess:
    "Headless Chromium on loopback only, with a fresh profile."
    cmd = [CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
           '--disable-background-networking', '--disable-component-update', '--disable-sync',
           '--disable-dev-shm-usage', '--hide-scrollbars', f'--user-data-dir={user_data}',
           '--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1', '--virtual-time-budget=30000', *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _widget_js(folder:Path) -> Path:
    "html-manager's standalone embed.js in `folder`: from $FEDHELLO_WIDGET_JS, else unpacked from `npm pack`."
    dest = folder/'embed.js'
    given = os.environ.get('FEDHELLO_WIDGET_JS')
    if given:
        shutil.copy(given, dest); return dest
    npm = shutil.which('npm')
    if npm is None:
        pytest.fail('npm (Node.js) is needed to fetch @jupyter-widgets/html-manager from the npm registry; '
                    'or set FEDHELLO_WIDGET_JS to a local copy of its dist/embed.js')
    r = subprocess.run([npm, 'pack', HTML_MANAGER, '--pack-destination', str(folder), '--silent'],
                       capture_output=True, text=True, timeout=300, cwd=folder)
    assert r.returncode == 0, f'npm pack {HTML_MANAGER} failed: {r.stderr[-2000:]}'
    tgz = folder/r.stdout.strip().splitlines()[-1]
    with tarfile.open(tgz) as t:
        dest.write_bytes(t.extractfile('package/dist/embed.js').read())
    return dest


class _Page(HTMLParser):
    "Counts the classes of the elements in a DOM, the images with PNG data, and the text."
    def __init__(self):
        super().__init__()
        self.classes, self.pngs, self.text, self._skip = Counter(), 0, [], 0
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.classes.update((a.get('class') or '').split())
        if tag == 'img' and (a.get('src') or '').startswith('data:image/png'): self.pngs += 1
        if tag in ('script', 'style'): self._skip += 1
    def handle_endtag(self, tag):
        if tag in ('script', 'style'): self._skip = max(0, self._skip - 1)
    def handle_data(self, data):
        if not self._skip: self.text.append(data)


def _remote_loads(page:str, # the HTML of the page
                  base:str  # where it may load from, e.g. 'http://127.0.0.1:8000'
                 ) -> list[str]:
    "URLs the page would fetch from elsewhere than `base`: scripts, links, images, frames, CSS `url()` and `@import`."
    tags = re.findall(r'<(?:script|link|img|iframe|source|embed)\b[^>]*>', page, re.I)
    urls = [u for t in tags for u in re.findall(r'\s(?:src|href|srcset)\s*=\s*["\']?([^"\'\s>]+)', t, re.I)]
    urls += re.findall(r'(?:url\(\s*["\']?|@import\s+["\'])((?:[a-z][a-z0-9+.-]*:)?//[^"\')\s]+)', page, re.I)
    absolute = lambda u: re.match(r'(?:[a-z][a-z0-9+.-]*:)?//', u, re.I)   # relative URLs and data: stay here
    return [u for u in urls if absolute(u) and not u.startswith(base + '/')]


def test_remote_loads():
    base = 'http://127.0.0.1:8000'
    page = (f'<script src="{base}/embed.js"></script><script>var a = "<b>";</script>'
            '<link rel="stylesheet" href="https://cdn.example.org/font-awesome.css">'
            "<LINK rel=icon href='//cdn.example.org/favicon.ico'><link rel=preload href=local.css>"
            '<img src="data:image/png;base64,AAAA"><style>@import "https://fonts.example.org/x.css"; '
            '.a{background:url(data:image/svg+xml;base64,AAA)} .b{background:url( "http://img.example.org/b.png")}</style>'
            f'<script src="{base}.evil.org/x.js"></script>')
    assert _remote_loads(page, base) == ['https://cdn.example.org/font-awesome.css', '//cdn.example.org/favicon.ico',
                                         f'{base}.evil.org/x.js', 'https://fonts.example.org/x.css',
                                         'http://img.example.org/b.png']
    assert _remote_loads(f'<link href="{base}/style.css"><script src="{base}/a.js">', base) == []


def _serve(folder:Path):
    "A loopback HTTP server for `folder` in a thread: (server, list of requested paths)."
    requested = []
    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, *args): requested.append(self.path)
    server = ThreadingHTTPServer(('127.0.0.1', 0), partial(Handler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, requested


@needs_chromium
def test_panels_render_in_chromium(tmp_path, capsys):
    import nbformat
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter
    t0 = time.perf_counter()
    site = tmp_path/'site'; site.mkdir()
    _widget_js(site)
    (site/'no-require.js').write_text('// the standalone embed.js needs no AMD loader\n')
    t_js = time.perf_counter()

    # 1. execute the notebook, keeping the widget state
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c.format(run_dir=str(tmp_path/'run')) if '{run_dir' in c else c) for c in CELLS]
    env = {'HF_HUB_OFFLINE': '1', 'MPLBACKEND': 'Agg', 'TOKENIZERS_PARALLELISM': 'false'}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(nb, timeout=600, kernel_name='python3', store_widget_state=True,
                       resources={'metadata': {'path': str(ROOT)}}).execute()
    finally:
        for k, v in old.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v
    t_exec = time.perf_counter()
    state = nb.metadata.get('widgets', {}).get(STATE_MIME, {}).get('state', {})
    assert state, 'the executed notebook holds no widget state'
    models = Counter(m['model_name'] for m in state.values())
    assert models['OutputModel'] >= NUM_FIGURES and models['IntSliderModel'] >= 1 and models['DropdownModel'] >= 5
    stored_pngs = sum('image/png' in o.get('data', {}) for m in state.values() if m['model_name'] == 'OutputModel'
                      for o in m['state'].get('outputs', []))
    assert stored_pngs >= NUM_FIGURES, stored_pngs
    nbformat.write(nb, tmp_path/'panels.ipynb')

    # 2. render to HTML with the widget JavaScript served from here
    server, requested = _serve(site)
    base = f'http://127.0.0.1:{server.server_address[1]}'
    try:
        exporter = HTMLExporter(template_name='lab', exclude_input=True, widget_renderer_url=f'{base}/embed.js',
                                require_js_url=f'{base}/no-require.js', mathjax_url=f'{base}/no-require.js')
        page, _ = exporter.from_notebook_node(nb)
        remote = _remote_loads(page, base)
        assert remote == [], f'the page still loads files from elsewhere: {remote}'
        assert STATE_MIME in page and f'{base}/embed.js' in page
        (site/'panels.html').write_text(page)

        # 3. open it in headless Chromium: the DOM after the scripts ran, and a screenshot
        r = _chromium('--dump-dom', f'{base}/panels.html', user_data=tmp_path/'profile-dom')
        assert r.returncode == 0, r.stderr[-3000:]
        dom = r.stdout
        (tmp_path/'dom.html').write_text(dom)
        shot = tmp_path/'panels.png'
        r = _chromium('--window-size=1300,4200', f'--screenshot={shot}', f'{base}/panels.html',
                      user_data=tmp_path/'profile-shot')
        assert r.returncode == 0 and shot.is_file() and shot.stat().st_size > 50_000, r.stderr[-3000:]
    finally:
        server.shutdown(); server.server_close()
    t_browser = time.perf_counter()
    kept = [shot, tmp_path/'dom.html', site/'panels.html']
    if os.environ.get('FEDHELLO_ARTIFACTS'):          # kept before the checks below, so a failure leaves its screenshot
        out = Path(os.environ['FEDHELLO_ARTIFACTS']).resolve(); out.mkdir(parents=True, exist_ok=True)
        kept = [Path(shutil.copy(f, out/f.name)) for f in kept]
    with capsys.disabled():                            # shown in a passing run too
        print(f'\nbrowser check: screenshot {kept[0]}\n  DOM {kept[1]}\n  HTML {kept[2]}\n'
              f'  seconds: widget JS {t_js - t0:.1f}, execute {t_exec - t_js:.1f}, render and browser {t_browser - t_exec:.1f}')

    # 4. the panels rendered: the widget script was fetched from here, and the controls and figures are in the page
    assert '/embed.js' in requested, requested
    p = _Page(); p.feed(dom)
    c, text = p.classes, ' '.join(p.text)
    assert c['fedhello-panel'] == NUM_PANELS, c['fedhello-panel']
    assert c['fedhello-status'] == NUM_PANELS
    for cls, least in (('widget-slider', 5), ('widget-dropdown', 10), ('widget-button', NUM_PANELS + 3), ('widget-text', 5),
                       ('widget-textarea', NUM_PANELS), ('widget-output', NUM_FIGURES), ('widget-checkbox', 2),
                       ('widget-toggle-buttons', 2), ('widget-hprogress', 1)):
        assert c[cls] >= least, (cls, c[cls], least)
    assert p.pngs >= NUM_FIGURES, p.pngs
    for phrase in ('Layer allocation', 'Data partition', 'Near-IID groups', 'Memory per allocation', 'clients in classes',
                   'against', 'for a random grouping', 'done: 3 rounds'):
        assert phrase in text, phrase
