// The chat: messages with the model's chat template, streamed replies, Stop, per-reply timing.
import { $, el } from "./util.js";

export class ChatView {
  constructor() {
    this.messages = [];   // [{role, content}] sent to the model
    this.current = null;  // {bubble, text, stats} of the reply being streamed
  }

  settings() {
    const out = {};
    for (const input of document.querySelectorAll("[data-setting]")) {
      if (input.value === "") continue;
      const v = Number(input.value);
      if (!Number.isFinite(v)) throw new Error(`${input.labels[0].textContent}: "${input.value}" is not a number`);
      out[input.dataset.setting] = v;
    }
    return out;
  }

  addUser(text) {
    this.messages.push({ role: "user", content: text });
    $("chat-log").append(el("div", { className: "msg user" }, el("span", { className: "who" }, "You"),
      el("p", { className: "text" }, text)));
    this._scroll();
  }

  /** Start an assistant bubble for the streamed reply. */
  beginReply() {
    const text = el("p", { className: "text" });
    const stats = el("p", { className: "stats" }, "generating…");
    const bubble = el("div", { className: "msg assistant streaming" }, el("span", { className: "who" }, "Model"), text, stats);
    $("chat-log").append(bubble);
    this.current = { bubble, text, stats, content: "" };
    this._scroll();
    return this.current;
  }

  onToken(piece) {
    if (!this.current) this.beginReply();
    this.current.content += piece;
    this.current.text.append(piece);
    this._scroll();
  }

  /** The reply finished (chat.run result); it joins the conversation. */
  endReply(result) {
    const cur = this.current || this.beginReply();
    this.current = null;
    cur.bubble.classList.remove("streaming");
    const text = result.text;
    if (cur.content !== text) cur.text.textContent = text; // stop strings trimmed at the end
    this.messages.push({ role: "assistant", content: text });
    const s = result.stats || {};
    const ttft = s.ttft_ms === null || s.ttft_ms === undefined ? "–" : `${Math.round(s.ttft_ms)} ms`;
    const tps = s.decode_tokens_per_s || s.tokens_per_s;
    cur.stats.textContent = `${s.new_tokens} tokens · time to first token ${ttft} · ` +
      `${tps ? tps.toFixed(1) : "–"} tokens/s` + (s.stop_reason === "cancelled" ? " · stopped" : "") +
      (s.reused_tokens ? ` · ${s.reused_tokens} prompt tokens reused from the cache` : "");
    cur.stats.dataset.ttftMs = s.ttft_ms ?? "";
    cur.stats.dataset.tokensPerS = tps ?? "";
    cur.stats.dataset.newTokens = s.new_tokens ?? "";
    cur.stats.dataset.stopReason = s.stop_reason ?? "";
    this._scroll();
  }

  failReply(message) {
    const cur = this.current;
    this.current = null;
    this.messages.pop(); // the user message that failed is not part of the conversation
    if (cur) {
      cur.bubble.classList.remove("streaming");
      cur.bubble.classList.add("failed");
      cur.stats.textContent = `failed: ${message}`;
    }
  }

  clear() {
    this.messages = [];
    this.current = null;
    $("chat-log").replaceChildren();
  }

  /** Keep the newest text in view: once per frame, so streaming never forces a synchronous layout. */
  _scroll() {
    if (this._scrollPending) return;
    this._scrollPending = true;
    requestAnimationFrame(() => {
      this._scrollPending = false;
      const log = $("chat-log");
      log.scrollTop = log.scrollHeight;
    });
  }
}
