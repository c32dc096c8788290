// sha256 of bytes as lowercase hex (Web Crypto), shared by the Python worker and onnxruntime's worker.
export async function sha256Hex(bytes) {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}
