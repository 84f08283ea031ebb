// The nbflow occupancy panel: draws the `snapshot` trait. Plain ES module, no build step.
// The kernel sends a snapshot only when something changed; "held for" ticks here, on the browser's clock
// corrected by the offset between it and the kernel's clock at the last snapshot.
// Each running task listed has a stop button: a click sends {stop: key} to the kernel, which stops that task.

const STATUSES = ["pending", "waiting", "running", "stopping", "finished", "error", "cancelled"];
const BYTE_UNITS = ["kB", "MB", "GB", "TB", "PB"];
const byName = new Intl.Collator(undefined, { numeric: true }); // worker 2 before worker 10

function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value !== undefined && value !== null) node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child !== undefined && child !== null && child !== false) node.append(child);
  }
  return node;
}

function sig(x) {
  return Number.isInteger(x) ? String(x) : String(Number(x.toPrecision(3)));
}

// Same rules as nbflow.render.format_amount: MEMORY in decimal bytes, others as plain numbers.
function amount(resource, x) {
  if (resource.toUpperCase() === "MEMORY" && Math.abs(x) >= 1000) {
    let unit = "";
    for (unit of BYTE_UNITS) {
      x /= 1000;
      if (Math.abs(x) < 1000) break;
    }
    return `${sig(x)} ${unit}`;
  }
  return sig(x);
}

function duration(seconds) {
  seconds = Math.max(seconds, 0);
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${String(Math.floor(seconds % 60)).padStart(2, "0")} s`;
  return `${Math.floor(minutes / 60)} h ${String(minutes % 60).padStart(2, "0")} min`;
}

// A used/total bar; `label` (the name) is left out in the workers table, whose header names the column.
function bar(name, used, total, label) {
  const fraction = total > 0 ? Math.min(Math.max(used / total, 0), 1) : 0;
  const state = used > total ? "over" : fraction >= 1 ? "full" : used > 0 ? "busy" : "idle";
  const text = `${amount(name, used)}/${amount(name, total)}`;
  return h(
    "span",
    { class: `nbflow-res nbflow-${state}`, "data-resource": name, "data-used": used, "data-total": total,
      title: `${name}: ${text} in use` },
    label ? h("span", { class: "nbflow-res-name" }, label) : null,
    h("span", { class: "nbflow-bar" },
      h("span", { class: "nbflow-fill", style: `width: ${(fraction * 100).toFixed(1)}%` })),
    h("span", { class: "nbflow-num" }, text),
  );
}

function count(n, what) {
  return h("span", { class: `nbflow-count nbflow-${what}${n ? "" : " nbflow-zero"}`, "data-count": what },
    h("b", null, String(n)), ` ${what}`);
}

function header(snap) {
  const taken = snap.time ? new Date(snap.time * 1000).toLocaleTimeString() : "";
  const tasks = snap.tasks || {};
  return [
    h("div", { class: "nbflow-title" },
      h("span", { class: "nbflow-logo" }, "nbflow"),
      h("span", null, `${snap.engine || "?"} engine`),
      h("span", null, `${(snap.workers || []).length} worker${(snap.workers || []).length === 1 ? "" : "s"}`),
      h("span", { class: "nbflow-time", title: "last change" }, taken)),
    snap.error ? h("div", { class: "nbflow-error-line" }, snap.error) : null,
    h("div", { class: "nbflow-tasks", title: "tasks by status" },
      STATUSES.map((status) => count(tasks[status] || 0, status))),
  ];
}

const WORKER_COUNTS = ["running", "waiting", "queued"];

// One compact row per worker, a column per resource (the union over workers; blank where a worker has none).
function workerTable(workers) {
  const names = [...new Set(workers.flatMap((worker) => Object.keys(worker.resources || {})))];
  const head = h("tr", null,
    h("th", { class: "nbflow-wname" }, "worker"),
    names.map((name) => h("th", null, name)),
    WORKER_COUNTS.map((what) => h("th", { class: "nbflow-n" }, what)));
  const rows = workers.map((worker) => {
    const host = worker.host && !String(worker.name).includes(worker.host) ? worker.host : null;
    return h("tr", { class: "nbflow-worker", "data-worker": worker.name },
      h("td", { class: "nbflow-wname", title: `${worker.name} on ${worker.host || "?"}` },
        worker.name, host ? h("small", null, host) : null,
        (worker.gpus || []).map((use) =>
          h("small", { class: "nbflow-gpus", "data-task": use.task, "data-devices": use.ids }, `${use.task}: GPU ${use.ids}`))),
      names.map((name) => {
        const use = (worker.resources || {})[name];
        return h("td", null, use ? bar(name, use.used, use.total) : null);
      }),
      WORKER_COUNTS.map((what) => {
        const n = worker[what] || 0;
        return h("td", { class: `nbflow-n nbflow-${what}${n ? "" : " nbflow-zero"}`, "data-count": what }, String(n));
      }));
  });
  return h("table", { class: "nbflow-wtable" }, h("thead", null, head), h("tbody", null, rows));
}

// A limit's rate, its burst and when the next start is allowed (as of the snapshot), as nbflow.render.rate_summary.
function rateText(limit) {
  const burst = limit.burst && limit.burst !== 1 ? ` (burst ${limit.burst})` : "";
  const next = limit.next_start > 0 ? `in ${duration(limit.next_start)}` : "now";
  return `rate ${limit.rate}${burst}, next start ${next}`;
}

function limitRow(limit) {
  const holders = limit.holders || [];
  const label = limit.scope === "cluster" ? `${limit.name} (cluster)` : limit.name;
  return h("div", { class: "nbflow-limit", "data-limit": limit.name },
    h("div", { class: "nbflow-limit-head" },
      limit.capacity === null || limit.capacity === undefined // a rate alone: no capacity to fill
        ? h("span", { class: "nbflow-res", "data-resource": limit.name, "data-used": limit.used },
            h("span", { class: "nbflow-res-name" }, label), h("span", { class: "nbflow-num" }, `${amount(limit.name, limit.used)} held`))
        : bar(limit.name, limit.used, limit.capacity, label),
      limit.rate ? h("span", { class: "nbflow-rate", "data-rate": limit.rate, "data-next-start": limit.next_start },
        rateText(limit)) : null,
      count(limit.waiting || 0, "waiting")),
    holders.length
      ? h("ul", { class: "nbflow-holders" }, holders.map((holder) => h("li", { class: "nbflow-holder" },
          h("span", null, `pid ${holder.pid}@${holder.host}`),
          h("span", { class: "nbflow-task" }, holder.task || "-"),
          h("span", null, amount(limit.name, holder.amount)),
          (holder.slots || []).length
            ? h("span", { class: "nbflow-slots", "data-slots": holder.slots.join(",") }, `slot ${holder.slots.join(",")}`)
            : null,
          h("span", { class: "nbflow-held", "data-since": holder.since }, ""))))
      : null);
}

// One row per running (or stopping) task: name, status, worker, and a stop button. `asked` holds the keys of the
// tasks whose button was clicked: they read "stopping" until the kernel's next snapshot says so itself.
function runningRow(task, asked, stop) {
  const stopping = task.status === "stopping" || asked.has(task.key);
  const button = h("button", { class: "nbflow-stop", type: "button", title: `stop ${task.name}`,
    "aria-label": `stop ${task.name}` }, stopping ? "stopping…" : "stop");
  button.disabled = stopping;
  button.addEventListener("click", () => stop(task.key));
  return h("li", { class: `nbflow-run nbflow-${stopping ? "stopping" : "running"}`, "data-key": task.key,
      "data-task": task.name, "data-status": stopping ? "stopping" : task.status },
    h("span", { class: "nbflow-task" }, task.name),
    h("span", { class: "nbflow-run-status" }, stopping ? "stopping" : task.status),
    h("span", { class: "nbflow-run-worker" }, task.worker || ""),
    button);
}

export default {
  render({ model, el }) {
    const clock = { offset: 0 }; // browser clock minus kernel clock, in seconds
    const head = h("div", { class: "nbflow-head" });
    const workers = h("div", { class: "nbflow-workers" });
    const runningTitle = h("div", { class: "nbflow-section" }, "running tasks");
    const running = h("ul", { class: "nbflow-running" });
    const limitsTitle = h("div", { class: "nbflow-section" }, "machine limits");
    const limits = h("div", { class: "nbflow-limits" });
    el.append(h("div", { class: "nbflow-monitor" }, head, workers, runningTitle, running, limitsTitle, limits));
    const asked = new Set(); // keys of the tasks whose stop button was clicked
    const stop = (key) => {
      asked.add(key);
      model.send({ stop: key });
      draw();
    };

    const tickHeld = () => {
      const now = Date.now() / 1000 - clock.offset;
      for (const node of limits.querySelectorAll("[data-since]")) {
        node.textContent = `held ${duration(now - Number(node.dataset.since))}`;
      }
    };
    const draw = () => {
      const snap = model.get("snapshot") || {};
      if (snap.time) clock.offset = Date.now() / 1000 - snap.time;
      head.replaceChildren(...header(snap).filter(Boolean));
      const list = [...(snap.workers || [])].sort((a, b) => byName.compare(String(a.name), String(b.name)));
      workers.replaceChildren(...(list.length ? [workerTable(list)] : [])); // the scroll box itself stays
      const tasks = snap.running || []; // (a snapshot from another source may not list them)
      const listed = new Set(tasks.map((task) => task.key));
      for (const key of asked) if (!listed.has(key)) asked.delete(key); // stopped: its row is gone
      const counts = snap.tasks || {};
      const more = snap.running ? (counts.running || 0) + (counts.stopping || 0) - tasks.length : 0;
      runningTitle.hidden = tasks.length === 0;
      running.replaceChildren(...tasks.map((task) => runningRow(task, asked, stop)),
        ...(more > 0 ? [h("li", { class: "nbflow-run-more" }, `and ${more} more`)] : []));
      const rows = (snap.limits || []).map(limitRow);
      limitsTitle.hidden = rows.length === 0;
      limits.replaceChildren(...rows);
      tickHeld();
    };
    model.on("change:snapshot", draw);
    draw();
    const timer = setInterval(tickHeld, 1000);
    return () => {
      clearInterval(timer);
      model.off("change:snapshot", draw);
    };
  },
};
