// What the dashboard learns from the TensorBoard page around its iframe:
// when data reloads, and whether dark mode is on.

// TensorBoard's plugin API: the iframe posts "experimental.bootstrap" with a
// MessagePort; the host sends JSON messages through it and waits for
// replies, among them "experimental.DataReloaded" after every reload.
export function onDataReloaded(callback) {
  if (window.parent === window) return;
  const channel = new MessageChannel();
  channel.port1.onmessage = (event) => {
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    if (message.isReply) return;
    channel.port1.postMessage(
      JSON.stringify({ type: message.type, id: message.id, payload: null, error: null, isReply: true }),
    );
    if (message.type === "experimental.DataReloaded") callback();
  };
  window.parent.postMessage("experimental.bootstrap", "*", [channel.port2]);
}

// TensorBoard marks dark mode with a class on its own <body> (its toggle
// defaults to the system's setting); an iframe of the same origin reads it
// there. Alone (or if the parent cannot be read) the system's setting rules.
export function followTheme(onChange) {
  const root = document.documentElement;
  const media = window.matchMedia("(prefers-color-scheme: dark)");
  let parentBody = null;
  try {
    if (window.parent !== window) parentBody = window.parent.document.body;
  } catch {
    parentBody = null;
  }
  const apply = () => {
    const dark = parentBody ? parentBody.classList.contains("dark-mode") : media.matches;
    const theme = dark ? "dark" : "light";
    if (root.dataset.theme === theme) return;
    root.dataset.theme = theme;
    onChange?.(theme);
  };
  apply();
  if (parentBody) {
    new MutationObserver(apply).observe(parentBody, { attributes: true, attributeFilter: ["class"] });
  }
  media.addEventListener("change", apply);
}
