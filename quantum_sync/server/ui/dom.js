// Small DOM helpers. Text always goes in as text (textContent), never as markup: file
// names are whatever clients chose, markup included.

export const $ = (id) => document.getElementById(id);

export function el(tag, { text, className, attrs, on } = {}, children = []) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  if (attrs) for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (on) for (const [name, handler] of Object.entries(on)) node.addEventListener(name, handler);
  for (const child of children) if (child) node.append(child);
  return node;
}

export function button(text, onClick, className) {
  return el("button", { text, className, attrs: { type: "button" }, on: { click: onClick } });
}

// A modal question: resolves with the input's value (prompt), true (confirm) or null.
export function ask(text, { value = null, okText = "OK" } = {}) {
  const dialog = $("dialog");
  const input = $("dialog-input");
  $("dialog-text").textContent = text;
  $("dialog-ok").textContent = okText;
  input.hidden = value === null;
  input.value = value === null ? "" : value;
  return new Promise((resolve) => {
    const finish = (answer) => {
      $("dialog-form").removeEventListener("submit", submitted);
      $("dialog-cancel").removeEventListener("click", cancelled);
      dialog.removeEventListener("cancel", cancelled);
      if (dialog.open) dialog.close();
      resolve(answer);
    };
    const submitted = (event) => {
      event.preventDefault();
      finish(value === null ? true : input.value);
    };
    const cancelled = (event) => {
      event.preventDefault();
      finish(null);
    };
    $("dialog-form").addEventListener("submit", submitted);
    $("dialog-cancel").addEventListener("click", cancelled);
    dialog.addEventListener("cancel", cancelled);
    dialog.showModal();
    if (value !== null) {
      input.focus();
      input.select();
    }
  });
}
