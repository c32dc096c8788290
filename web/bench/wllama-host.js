// The benchmark's wllama side (llama.cpp compiled to WASM, the bench's CPU anchor): wllama 3.13.0 from
// vendor/wllama/ (no CDN), a GGUF from the site's origin, greedy completion of a prompt given as text.
//
// wllama runs its own worker (and pthreads when threads > 1, which needs cross-origin isolation); this
// module drives it from the page, so page-clock times include the same kind of message hop as the
// other two libraries' workers. Its completion API takes text, not ids: the bench passes the text of
// its prompt ids and checks the prompt token count wllama reports against the ids' count.
const base = new URL("../", import.meta.url);
const WASM_URL = new URL("vendor/wllama/wasm/wllama.wasm", base).href;

export class WllamaHost {
  /** Import the vendored module; ``threads`` null keeps wllama's default (half the cores). */
  static async start({ threads }) {
    const mod = await import(new URL("vendor/wllama/index.js", base).href);
    const h = new WllamaHost();
    h.log = [];
    const keep = (level) => (...a) => { if (h.log.length < 40) h.log.push(`${level}: ${a.join(" ")}`.slice(0, 300)); };
    h.w = new mod.Wllama({ default: WASM_URL },
                         { logger: { debug: () => {}, log: keep("log"), warn: keep("warn"), error: keep("error") } });
    h.threads = threads;
    h.version = mod.Wllama.getLibllamaVersion ? mod.Wllama.getLibllamaVersion() : null;
    return h;
  }

  /** Load the GGUF at ``url`` (wllama caches it in the origin's storage: the warm run reads it there). */
  async load({ url, n_ctx }) {
    await this.w.loadModelFromUrl(new URL(url, location.href).href, {
      n_gpu_layers: 0,  // CPU only: the anchor is llama.cpp's WASM kernels
      n_ctx, n_parallel: 1,
      ...(this.threads ? { n_threads: this.threads } : {}),
    });
    return { num_threads: this.w.getNumThreads(), multithread: this.w.isMultithread(), libllama: this.version };
  }

  /**
   * Greedy completion of ``text`` (temperature 0, top_k 1), ``max_new_tokens`` at most; ``onToken`` is
   * called as each generated token arrives. Returns {ids, text, prompt_tokens, timings (llama.cpp's own)}.
   */
  async generate({ text, max_new_tokens, onToken }) {
    const ids = [];
    let out = "";
    let last = null;
    await this.w.createCompletion({
      prompt: text, max_tokens: max_new_tokens, temperature: 0, top_k: 1, n_probs: 1,  // n_probs: the token ids
      cache_prompt: false, stream: true,
      onData: (chunk) => {
        last = chunk;
        const choice = (chunk.choices || [])[0] || {};
        const content = choice.logprobs && choice.logprobs.content;
        if (content && content.length) {
          out += choice.text || "";
          for (const c of content) {
            ids.push(c.id);
            onToken && onToken();
          }
        }
      },
    });
    const usage = (last && last.usage) || {};
    return { ids, text: out, prompt_tokens: usage.prompt_tokens ?? null, timings: (last && last.timings) || null };
  }

  async exit() {
    await this.w.exit();
  }
}
