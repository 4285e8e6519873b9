// A virtualised list: only the rows in view (and a few around them) are in the DOM, so a
// folder of tens of thousands of entries scrolls as smoothly as one of ten.

const OVERSCAN = 8;

export class VirtualList {
  constructor(container, spacer, rowHeight, renderRow) {
    this.container = container;
    this.spacer = spacer;
    this.rowHeight = rowHeight;
    this.renderRow = renderRow;
    this.items = [];
    this.rows = [];
    this.pending = false;
    container.addEventListener("scroll", () => this.schedule(), { passive: true });
    window.addEventListener("resize", () => this.schedule());
  }

  setItems(items) {
    this.items = items;
    this.spacer.style.height = `${items.length * this.rowHeight}px`;
    this.render();
  }

  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.render();
    });
  }

  render() {
    const top = this.container.scrollTop;
    const height = this.container.clientHeight || this.rowHeight * 20;
    const first = Math.max(0, Math.floor(top / this.rowHeight) - OVERSCAN);
    const last = Math.min(this.items.length, Math.ceil((top + height) / this.rowHeight) + OVERSCAN);
    for (const row of this.rows) row.remove();
    this.rows = [];
    const fragment = document.createDocumentFragment();
    for (let index = first; index < last; index++) {
      const row = this.renderRow(this.items[index], index);
      row.style.transform = `translateY(${index * this.rowHeight}px)`;
      row.style.top = "0";
      this.rows.push(row);
      fragment.append(row);
    }
    this.container.append(fragment);
  }
}
