// Filters and sorts the unit grid: search text, layer, method; by channel, activation or
// relevance in explanations. Reads ?q=, ?layer=, ?method= and ?sort= from the address.
// No network access.
(function () {
  const grid = document.getElementById("grid");
  if (!grid) return;
  const search = document.getElementById("search");
  const layer = document.getElementById("layer");
  const method = document.getElementById("method");
  const sort = document.getElementById("sort");
  const count = document.getElementById("count");
  const cards = Array.from(grid.querySelectorAll(".card"));

  function number(card, key, missing) {
    const value = parseFloat(card.dataset[key]);
    return Number.isFinite(value) ? value : missing;
  }

  const orders = {
    channel: (a, b) => number(a, "order", 1e12) - number(b, "order", 1e12),
    activation: (a, b) =>
      number(b, "activation", -Infinity) - number(a, "activation", -Infinity) ||
      number(a, "order", 1e12) - number(b, "order", 1e12),
    relevant: (a, b) =>
      number(b, "relevant", 0) - number(a, "relevant", 0) ||
      number(b, "share", 0) - number(a, "share", 0) ||
      number(a, "order", 1e12) - number(b, "order", 1e12),
  };

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
    const order = orders[sort.value] || orders.channel;
    for (const card of cards.slice().sort(order)) grid.appendChild(card);
    count.textContent = shown + " of " + cards.length + " units";
  }

  const query = new URLSearchParams(window.location.search);
  if (query.get("q")) search.value = query.get("q");
  for (const [name, select] of [["layer", layer], ["method", method], ["sort", sort]]) {
    const value = query.get(name);
    if (value && Array.from(select.options).some((option) => option.value === value)) {
      select.value = value;
    }
  }
  search.addEventListener("input", apply);
  layer.addEventListener("change", apply);
  method.addEventListener("change", apply);
  sort.addEventListener("change", apply);
  apply();
})();
