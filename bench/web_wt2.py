"""The browser page on the WikiText-2 compressed model: tokens/s of onnxruntime-web in headless Chromium (real time,
driven by Selenium and chromium-driver), the page's greedy tokens against Python's, and a screenshot for the
tutorial.

Needs `pip install selenium`, Debian's chromium and chromium-driver, and `npm ci` in web/. The model is the 100x file of
bench/pipeline_wt2.py (or --model). Run alone. Writes bench/out/web_wt2.json and nbs/tutorials/images/web_page.png.

    python bench/web_wt2.py [--model FILE] [--new 100] [--prompt "The game"]
"""

import argparse, importlib.util, json, platform, sys, tempfile, threading, time
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).parent))
from train_wt2 import ROOT
from resnet_bk_compress.files import load_model, file_bytes
from resnet_bk_compress.export import export_onnx
from resnet_bk_compress.generate import generate_ids, prompt_ids


def run_page(driver, url, timeout=600) -> dict:
    driver.get(url)
    t0 = time.time()
    while time.time() - t0 < timeout:
        el = driver.find_element('id', 'ids')
        if el.get_attribute('data-done') == '1':
            return json.loads(el.get_attribute('textContent'))
        time.sleep(0.2)
    raise TimeoutError(url)


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--model', default=None)
    p.add_argument('--new', type=int, default=100)
    p.add_argument('--prompt', default='The game')
    p.add_argument('--out', default=str(ROOT / 'bench' / 'out' / 'web_wt2.json'))
    p.add_argument('--screenshot', default=str(ROOT / 'nbs' / 'tutorials' / 'images' / 'web_page.png'))
    a = p.parse_args()
    from selenium import webdriver

    f = a.model or json.loads((ROOT / '.cache' / 'pipeline_wt2' / 'report.json').read_text())['compressed_file']
    model, vocab, _ = load_model(f)
    spec = importlib.util.spec_from_file_location('serve', ROOT / 'web' / 'serve.py')
    serve = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serve)
    with tempfile.TemporaryDirectory() as d:
        o = export_onnx(model, Path(d) / 'wt2.onnx', vocab)
        server = serve.server(Path(d))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        opts = webdriver.ChromeOptions()
        for flag in (
            '--headless',
            '--no-sandbox',
            '--disable-gpu',
            '--disable-background-networking',
            '--window-size=1000,900',
        ):
            opts.add_argument(flag)
        opts.binary_location = '/usr/bin/chromium'
        driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService('/usr/bin/chromedriver'))
        try:
            base = f'http://127.0.0.1:{server.server_address[1]}/?'
            greedy = run_page(
                driver, base + urlencode(dict(model='/model/wt2.onnx', prompt=a.prompt, n=a.new, greedy=1, autorun=1))
            )
            ids = prompt_ids(vocab, a.prompt)
            py = generate_ids(model, ids, a.new, greedy=True, banned=vocab.unk_id)[len(ids) :].tolist()
            sampled = run_page(
                driver,
                base + urlencode(dict(model='/model/wt2.onnx', prompt=a.prompt, n=a.new, seed=1, top_k=40, autorun=1)),
            )
            Path(a.screenshot).parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(a.screenshot)
        finally:
            driver.quit()
            server.shutdown()
        res = dict(
            model=str(f),
            model_file_bytes=file_bytes(f),
            onnx_bytes=file_bytes(o),
            vocab_json_bytes=file_bytes(o.with_suffix('.vocab.json')),
            prompt=a.prompt,
            new_tokens=a.new,
            greedy_tokens_per_s=greedy['tokens_per_s'],
            sampled_tokens_per_s=sampled['tokens_per_s'],
            same_greedy_tokens_as_python=greedy['new_ids'] == py,
            onnxruntime_web='1.30.0',
            machine=platform.machine(),
        )
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
