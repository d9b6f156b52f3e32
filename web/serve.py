"""Serve the generation page and an exported model on 127.0.0.1.

    python web/serve.py demo.onnx [--port 8000]

then open the printed address. The model (and NAME.vocab.json beside it, both written by `rbk-export`) is served as
/model/NAME.onnx; the page is this folder, with onnxruntime-web from `npm install` (run once in web/).
"""
import argparse, functools, http.server, sys
from pathlib import Path

WEB = Path(__file__).resolve().parent

class Handler(http.server.SimpleHTTPRequestHandler):
    "Files of web/, and of the model's folder under /model/; module scripts and WebAssembly with their MIME types."
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, '.mjs': 'text/javascript', '.js': 'text/javascript',
                      '.wasm': 'application/wasm', '.onnx': 'application/octet-stream', '.json': 'application/json'}
    def __init__(self, *a, model_dir: Path, **kw):
        self.model_dir = model_dir
        super().__init__(*a, directory=str(WEB), **kw)
    def translate_path(self, path):
        if path.startswith('/model/'): return str(self.model_dir / Path(path.split('?')[0]).name)
        return super().translate_path(path)
    def log_message(self, *a): pass

def server(model_dir: Path, port: int = 0) -> http.server.ThreadingHTTPServer:
    "A server for the page and the models in model_dir (port 0: any free port)."
    if not (WEB / 'node_modules' / 'onnxruntime-web').is_dir():
        raise SystemExit("onnxruntime-web is missing: run `npm install` in web/ first (it installs the pinned version of package.json)")
    return http.server.ThreadingHTTPServer(('127.0.0.1', port), functools.partial(Handler, model_dir=Path(model_dir).resolve()))

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('model', help='an .onnx file written by rbk-export (its .vocab.json beside it)')
    p.add_argument('--port', type=int, default=8000)
    a = p.parse_args()
    f = Path(a.model)
    if not f.is_file() or not f.with_suffix('.vocab.json').is_file():
        sys.exit(f"serve.py: {f} or {f.with_suffix('.vocab.json').name} not found: write both with `rbk-export MODEL --onnx {f}`")
    s = server(f.parent, a.port)
    print(f"http://127.0.0.1:{s.server_address[1]}/?model=/model/{f.name}")
    s.serve_forever()
