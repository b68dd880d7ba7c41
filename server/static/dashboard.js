// merchant-meta monitor: polls api/rounds and redraws the charts and tables in place.
// Everything from the store that reaches the page is set as text (textContent), never
// as HTML: merchant ids and error reasons come from merchants' replies.
"use strict";

const POLL_MS = 2000;
const COLORS = {
  before: "#9ca3af",
  after: "#2563eb",
  deltaMean: "#0d9488",
  deltaMax: "#f59e0b",
  update: "#7c3aed",
  replied: "#16a34a",
  failed: "#f97316",
  rejected: "#dc2626",
  minimum: "#374151",
  epsilon: "#7c3aed",
  clip: "#0d9488",
};
const EVALUATION_COLORS = ["#2563eb", "#0d9488", "#f59e0b", "#db2777", "#7c3aed", "#64748b"];
const VARIANT_DASHES = [[6, 4], [2, 3], [10, 3, 2, 3]];

const charts = {};

function dataset(label, color, extra) {
  return Object.assign(
    {
      label,
      data: [],
      borderColor: color,
      backgroundColor: color,
      borderWidth: 2,
      pointRadius: 2,
      spanGaps: true,
      tension: 0,
    },
    extra || {},
  );
}

function baseOptions(extra) {
  return Object.assign(
    {
      animation: false,
      maintainAspectRatio: false,
      interaction: { mode: "index", intersect: false },
      plugins: {
        legend: {
          position: "bottom",
          labels: { boxWidth: 12, usePointStyle: true, pointStyle: "line" },
        },
      },
      scales: {
        x: { title: { display: true, text: "round" } },
        y: { beginAtZero: false },
      },
    },
    extra || {},
  );
}

function makeCharts() {
  charts.loss = new Chart(document.getElementById("chart-loss"), {
    type: "line",
    data: {
      labels: [],
      datasets: [
        dataset("before adaptation (at θ)", COLORS.before, { borderDash: [5, 4] }),
        dataset("after adaptation", COLORS.after),
      ],
    },
    options: baseOptions(),
  });
  charts.delta = new Chart(document.getElementById("chart-delta"), {
    type: "line",
    data: {
      labels: [],
      datasets: [
        dataset("delta norm, mean", COLORS.deltaMean),
        dataset("delta norm, max", COLORS.deltaMax, { borderDash: [5, 4] }),
        dataset("update applied to θ", COLORS.update),
      ],
    },
    options: baseOptions({
      scales: { x: { title: { display: true, text: "round" } }, y: { beginAtZero: true } },
    }),
  });
  charts.merchants = new Chart(document.getElementById("chart-merchants"), {
    type: "bar",
    data: {
      labels: [],
      datasets: [
        dataset("replied", COLORS.replied, { stack: "outcome" }),
        dataset("failed", COLORS.failed, { stack: "outcome" }),
        dataset("rejected", COLORS.rejected, { stack: "outcome" }),
        dataset("min_merchants", COLORS.minimum, {
          type: "line",
          borderDash: [3, 3],
          borderWidth: 1.5,
          pointRadius: 0,
          backgroundColor: "transparent",
        }),
      ],
    },
    options: baseOptions({
      scales: {
        x: { stacked: true, title: { display: true, text: "round" } },
        y: { stacked: true, beginAtZero: true, ticks: { precision: 0 } },
      },
      plugins: {
        legend: { position: "bottom", labels: { boxWidth: 12 } },
      },
    }),
  });
  charts.evaluation = new Chart(document.getElementById("chart-evaluation"), {
    type: "line",
    data: { labels: [], datasets: [] },
    options: baseOptions({
      scales: {
        x: { title: { display: true, text: "round" } },
        y: { suggestedMin: 0, suggestedMax: 1 },
      },
    }),
  });
  charts.privacy = new Chart(document.getElementById("chart-privacy"), {
    type: "line",
    data: {
      labels: [],
      datasets: [
        dataset("epsilon", COLORS.epsilon, { yAxisID: "y" }),
        dataset("clip rate", COLORS.clip, { yAxisID: "clip", borderDash: [5, 4] }),
      ],
    },
    options: baseOptions({
      scales: {
        x: { title: { display: true, text: "round" } },
        y: { beginAtZero: true, title: { display: true, text: "ε" } },
        clip: {
          position: "right",
          min: 0,
          max: 1,
          grid: { drawOnChartArea: false },
          title: { display: true, text: "clip rate" },
        },
      },
    }),
  });
}

function setSeries(chart, labels, series) {
  chart.data.labels = labels;
  series.forEach((values, index) => {
    chart.data.datasets[index].data = values;
  });
  chart.update("none");
}

// Ranking metrics share the chart's 0-1 scale; their spreads ("-std") and settings
// stored beside them (such as "adapt-steps") do not.
function isRankingMetric(name) {
  return /^(ndcg|hr)@[0-9]+/.test(name) && !name.endsWith("-std");
}

function setEvaluation(rounds) {
  const names = [];
  rounds.forEach((row) => {
    Object.keys(row.evaluation).forEach((name) => {
      if (isRankingMetric(name) && !names.includes(name)) names.push(name);
    });
  });
  const evaluated = rounds.filter((row) =>
    Object.keys(row.evaluation).some(isRankingMetric),
  );
  // Headline metrics first, each followed by its variants.
  names.sort((a, b) => metricRank(a) - metricRank(b) || a.localeCompare(b));
  const chart = charts.evaluation;
  chart.data.labels = evaluated.map((row) => row.round);
  // A variant ("ndcg@10-alone") takes its metric's colour and a dash of its own.
  const bases = [];
  const variants = [];
  chart.data.datasets = names.map((name) => {
    const base = name.match(/^(ndcg|hr)@[0-9]+/)[0];
    const variant = name.slice(base.length);
    if (!bases.includes(base)) bases.push(base);
    if (variant && !variants.includes(variant)) variants.push(variant);
    return dataset(name, EVALUATION_COLORS[bases.indexOf(base) % EVALUATION_COLORS.length], {
      data: evaluated.map((row) => valueOrNull(row.evaluation[name])),
      borderDash: variant ? VARIANT_DASHES[variants.indexOf(variant) % VARIANT_DASHES.length] : [],
    });
  });
  chart.update("none");
  document.getElementById("evaluation-empty").hidden = evaluated.length > 0;
}

function metricRank(name) {
  const headline = ["ndcg@10", "hr@10"];
  const rank = headline.findIndex((metric) => name.startsWith(metric));
  return rank === -1 ? headline.length : rank;
}

function valueOrNull(value) {
  return value === undefined ? null : value;
}

function render(payload) {
  const run = payload.run;
  const rounds = payload.rounds;
  const training = rounds.filter((row) => row.started_at !== null);
  const labels = training.map((row) => row.round);
  const column = (key) => training.map((row) => row[key]);
  const minMerchants = run.min_merchants === undefined ? null : Number(run.min_merchants);

  setSeries(charts.loss, labels, [column("loss_before"), column("loss_after")]);
  setSeries(charts.delta, labels, [
    column("delta_norm_mean"),
    column("delta_norm_max"),
    column("update_norm"),
  ]);
  setSeries(charts.merchants, labels, [
    column("replied"),
    column("failed"),
    column("rejected"),
    training.map(() => minMerchants),
  ]);
  setEvaluation(rounds);
  const privacy = training.some((row) => row.epsilon !== null || row.clip_rate !== null);
  document.getElementById("panel-privacy").hidden = !privacy;
  setSeries(charts.privacy, labels, [column("epsilon"), column("clip_rate")]);

  renderHeader(run, training);
  renderAlerts(payload.alerts);
  renderFacts(training, rounds);
  renderMerchants(payload.merchants);
  renderRunInfo(run);
  const last = training.length ? training[training.length - 1].round : 0;
  document.body.dataset.lastRound = String(last);
}

function renderHeader(run, training) {
  document.getElementById("run-id").textContent = run.run_id ? `run ${run.run_id}` : "";
  const status = document.getElementById("run-status");
  status.textContent = run.status || "unknown";
  status.className = `badge ${run.status || ""}`;
  const done = training.length ? training[training.length - 1].round : 0;
  const planned = run.num_rounds ? ` of ${run.num_rounds}` : "";
  document.getElementById("progress").textContent = `round ${done}${planned}`;
}

function renderAlerts(messages) {
  const box = document.getElementById("alerts");
  box.replaceChildren(
    ...messages.map((message) => {
      const line = document.createElement("div");
      line.textContent = message;
      return line;
    }),
  );
  box.hidden = messages.length === 0;
}

function fact(value, label) {
  const box = document.createElement("div");
  box.className = "fact";
  const number = document.createElement("b");
  number.textContent = value;
  const caption = document.createElement("span");
  caption.textContent = label;
  box.append(number, caption);
  return box;
}

function formatNumber(value, digits) {
  if (value === null || value === undefined) return "–";
  return Number(value).toPrecision(digits || 4);
}

function formatBytes(bytes) {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return `${value.toFixed(unit ? 1 : 0)} ${units[unit]}`;
}

function renderFacts(training, rounds) {
  const facts = [];
  if (training.length) {
    const last = training[training.length - 1];
    facts.push(fact(`${last.replied} / ${last.sampled}`, `replied / sampled, round ${last.round}`));
    facts.push(fact(formatNumber(last.loss_after), "loss after adaptation"));
    facts.push(fact(formatNumber(last.meta_lr, 3), "meta_lr"));
    facts.push(fact(`${(last.ended_at - last.started_at).toFixed(1)} s`, "last round took"));
    const received = training.reduce((sum, row) => sum + row.bytes_received, 0);
    facts.push(fact(formatBytes(received), "received from merchants"));
  }
  const evaluated = rounds.filter((row) => row.evaluation["ndcg@10"] !== undefined);
  if (evaluated.length) {
    const last = evaluated[evaluated.length - 1];
    facts.push(fact(formatNumber(last.evaluation["ndcg@10"], 3), `NDCG@10, round ${last.round}`));
  }
  document.getElementById("facts").replaceChildren(...facts);
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function renderMerchants(merchants) {
  // Merchants in trouble first, then by id.
  const trouble = (row) => (row.last_status === "replied" ? 1 : 0);
  const sorted = merchants
    .slice()
    .sort((a, b) => trouble(a) - trouble(b) || a.merchant_id.localeCompare(b.merchant_id));
  const rows = sorted.map((row) => {
    const tr = document.createElement("tr");
    tr.dataset.merchantId = row.merchant_id;
    const error = row.last_error ? `round ${row.last_error_round}: ${row.last_error}` : "";
    tr.append(
      cell(row.merchant_id),
      cell(String(row.node_id), "muted"),
      cell(String(row.sampled), "num"),
      cell(String(row.replied), "num"),
      cell(String(row.failed), "num"),
      cell(String(row.rejected), "num"),
      cell(String(row.last_round), "num"),
      cell(row.last_status, `status-${row.last_status}`),
      // An error the merchant has recovered from is history, not a problem.
      cell(error, row.last_status === "replied" ? "muted" : "error"),
    );
    return tr;
  });
  document.querySelector("#merchants tbody").replaceChildren(...rows);
}

function renderRunInfo(run) {
  const items = [];
  Object.keys(run).forEach((key) => {
    const term = document.createElement("dt");
    term.textContent = key;
    const value = document.createElement("dd");
    value.textContent = prettyValue(key, run[key]);
    items.push(term, value);
  });
  document.getElementById("run-info").replaceChildren(...items);
}

function prettyValue(key, text) {
  if (key.endsWith("_at") && /^[0-9.]+$/.test(text)) {
    return new Date(Number(text) * 1000).toLocaleString();
  }
  if (text.startsWith("{")) {
    try {
      return JSON.stringify(JSON.parse(text), null, 2);
    } catch (error) {
      return text;
    }
  }
  return text;
}

async function poll() {
  const updated = document.getElementById("updated");
  try {
    const response = await fetch("api/rounds", { cache: "no-store" });
    if (!response.ok) throw new Error(`api/rounds answered ${response.status}`);
    render(await response.json());
    const now = new Date();
    updated.textContent = `updated ${now.toLocaleTimeString()}`;
    updated.className = "muted";
    document.body.dataset.updated = String(now.getTime());
  } catch (error) {
    updated.textContent = `not updated: ${error.message}`;
    updated.className = "badge failed";
  }
  window.setTimeout(poll, POLL_MS);
}

makeCharts();
window.merchantMeta = { charts };
poll();
