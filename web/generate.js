// Greedy or sampled generation with an exported ResNet-BK decoding step (rbk-export), in the browser.
// The page's address may carry the settings: ?model=/model/m.onnx&prompt=...&n=50&greedy=1&seed=0&temperature=1&top_k=0&autorun=1
import * as ort from './node_modules/onnxruntime-web/dist/ort.min.mjs';

ort.env.wasm.wasmPaths = new URL('./node_modules/onnxruntime-web/dist/', import.meta.url).href;
ort.env.wasm.numThreads = 1;  // threads need a cross-origin-isolated page; one step of this model is small

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

// the corpus's word-level tokens: whitespace-separated words, a line end is <eos>; a prompt follows an <eos>
function promptIds(vocab, stoi, prompt) {
  const lines = prompt.split('\n');
  const words = [vocab.words[vocab.eos]];
  lines.forEach((line, i) => {
    words.push(...line.split(/\s+/).filter((w) => w.length));
    if (i < lines.length - 1) words.push(vocab.words[vocab.eos]);
  });
  return words.map((w) => (stoi.has(w) ? stoi.get(w) : vocab.unk));
}

function detokenize(vocab, ids) {
  let text = '', sep = '';
  for (const i of ids) {
    if (i === vocab.eos) { text += '\n'; sep = ''; } else { text += sep + vocab.words[i]; sep = ' '; }
  }
  return text;
}

function mulberry32(seed) {  // a small seeded generator: a draw repeats with its seed (in this page; Python's draws differ)
  let a = seed >>> 0;
  return () => { a = (a + 0x6D2B79F5) >>> 0; let t = a; t = Math.imul(t ^ (t >>> 15), t | 1); t ^= t + Math.imul(t ^ (t >>> 7), t | 61); return ((t ^ (t >>> 14)) >>> 0) / 4294967296; };
}

function choose(logits, { greedy, temperature, topK, banned, rand }) {
  const n = logits.length;
  if (greedy) {  // the first largest, as torch.argmax
    let best = -1, bestV = -Infinity;
    for (let i = 0; i < n; i++) if (i !== banned && logits[i] > bestV) { bestV = logits[i]; best = i; }
    return best;
  }
  // the k-th largest logit as a threshold (a native numeric sort of a copy), then one pass: no per-token sort of the vocabulary's indices
  const sorted = topK > 0 && topK < n ? Float32Array.from(logits).sort() : null;
  const cut = sorted ? sorted[n - topK] : -Infinity;
  let m = -Infinity;
  for (let i = 0; i < n; i++) if (i !== banned && logits[i] > m) m = logits[i];
  const w = new Float64Array(n);
  let total = 0;
  for (let i = 0; i < n; i++) if (i !== banned && logits[i] >= cut) { w[i] = Math.exp((logits[i] - m) / temperature); total += w[i]; }
  let r = rand() * total;
  for (let i = 0; i < n; i++) { r -= w[i]; if (w[i] > 0 && r <= 0) return i; }
  for (let i = n - 1; i >= 0; i--) if (w[i] > 0) return i;
}

class Decoder {
  constructor(session, nLayers) { this.session = session; this.nLayers = nLayers; this.reset(); }
  reset() { this.pos = 0; this.state = new Float32Array(this.nLayers * 2); }
  async step(token) {
    const out = await this.session.run({
      token: new ort.Tensor('int64', BigInt64Array.from([BigInt(token)]), [1]),
      position: new ort.Tensor('int64', BigInt64Array.from([BigInt(this.pos)]), []),
      state: new ort.Tensor('float32', this.state, [this.nLayers, 1, 2]),
    });
    this.pos += 1; this.state = out.state_out.data;
    return out.logits.data;
  }
}

async function main() {
  const modelUrl = params.get('model') || '/model/model.onnx';
  const vocabUrl = modelUrl.replace(/\.onnx$/, '.vocab.json');
  const [vocab, session] = await Promise.all([fetch(vocabUrl).then((r) => r.json()), ort.InferenceSession.create(modelUrl, { executionProviders: ['wasm'] })]);
  const stoi = new Map(vocab.words.map((w, i) => [w, i]));
  const dec = new Decoder(session, vocab.n_layers);
  for (const k of ['prompt', 'n', 'temperature', 'top_k', 'seed']) if (params.has(k)) $(k).value = params.get(k);
  if (params.has('greedy')) $('greedy').checked = params.get('greedy') === '1';
  $('stats').textContent = `model: ${modelUrl} (${vocab.vocab_size.toLocaleString()} words, ${vocab.n_layers} blocks)`;

  async function run() {
    $('go').disabled = true;
    const prompt = $('prompt').value, n = parseInt($('n').value, 10);
    const opts = { greedy: $('greedy').checked, temperature: parseFloat($('temperature').value), topK: parseInt($('top_k').value, 10),
                   banned: vocab.unk, rand: mulberry32(parseInt($('seed').value, 10)) };
    const ids = promptIds(vocab, stoi, prompt);
    dec.reset();
    let logits;
    for (const t of ids) logits = await dec.step(t);
    const out = [], t0 = performance.now();
    for (let i = 0; i < n; i++) {
      const next = choose(logits, opts);
      out.push(next);
      $('text').textContent = prompt + (prompt && !prompt.endsWith('\n') && vocab.words[out[0]] !== vocab.words[vocab.eos] ? ' ' : '') + detokenize(vocab, out);
      if (i + 1 < n) logits = await dec.step(next);
    }
    const s = (performance.now() - t0) / 1000;
    $('stats').textContent = s > 0 ? `${n} tokens in ${s.toFixed(2)} s: ${(n / s).toFixed(1)} tokens/s (onnxruntime-web, WebAssembly, one thread)`
                                   : `${n} tokens (no clock: a headless run in virtual time)`;
    $('ids').textContent = JSON.stringify({ prompt_ids: ids, new_ids: out, tokens_per_s: s > 0 ? n / s : null });
    $('ids').dataset.done = '1';
    $('go').disabled = false;
  }
  $('go').onclick = run;
  $('go').disabled = false;
  if (params.get('autorun') === '1') await run();
}

main().catch((e) => { $('stats').textContent = `error: ${e.message || e}`; $('ids').textContent = JSON.stringify({ error: String(e) }); $('ids').dataset.done = '1'; });
