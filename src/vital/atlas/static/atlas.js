// Filters the unit grid by search text, layer and method. No network access.
(function () {
  const grid = document.getElementById("grid");
  if (!grid) return;
  const search = document.getElementById("search");
  const layer = document.getElementById("layer");
  const method = document.getElementById("method");
  const count = document.getElementById("count");
  const cards = Array.from(grid.querySelectorAll(".card"));

  function apply() {
    const words = search.value.trim().toLowerCase().split(/\s+/).filter(Boolean);
    let shown = 0;
    for (const card of cards) {
      const text = (card.dataset.unit + " " + card.dataset.label).toLowerCase();
      const visible =
        words.every((word) => text.includes(word)) &&
        (!layer.value || card.dataset.layer === layer.value) &&
        (!method.value || card.dataset.method === method.value);
      card.hidden = !visible;
      if (visible) shown += 1;
    }
    count.textContent = shown + " of " + cards.length + " units";
  }

  search.addEventListener("input", apply);
  layer.addEventListener("change", apply);
  method.addEventListener("change", apply);
  const query = new URLSearchParams(window.location.search).get("q");
  if (query) search.value = query;
  apply();
})();
