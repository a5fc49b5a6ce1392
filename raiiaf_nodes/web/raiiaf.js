// raiiaf in the ComfyUI frontend (checked in frontends 1.27.10 and 1.35.9):
// - dropping a .raiiaf onto the page loads the workflow stored in it, as dropping a SaveImage PNG does, and
//   uploads the file to the input folder so Raiiaf Load Replay can pick it;
// - an upload button for .raiiaf files on the replay nodes (the image upload widget only takes images);
// - a text box on the replay nodes with the replay report (drift, bit-identical check).
// Text from a file or the server is only ever shown as text (toasts, a textarea's value), never as HTML.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const REPLAY_NODES = new Set(["RaiiafLoad", "RaiiafResample"]);
const REPORT_KEY = "raiiaf_report";
const WORKFLOW_ROUTE = "/raiiaf/workflow"; // raiiaf_nodes/routes.py

function notify(severity, text) {
  const toast = app.extensionManager?.toast;
  if (toast?.add) toast.add({ severity, summary: "raiiaf", detail: text, life: severity === "error" ? 15000 : 6000 });
  else alert(text);
}

async function uploadRaiiaf(file) {
  // The endpoint LoadImage's upload uses; it stores any file in the input folder (same name + same content is
  // reused, same name + other content gets a new name).
  const body = new FormData();
  body.append("image", file, file.name);
  body.append("type", "input");
  const response = await api.fetchApi("/upload/image", { method: "POST", body });
  if (response.status !== 200) {
    throw new Error(`upload of ${file.name} failed: ${response.status} ${response.statusText}`);
  }
  const data = await response.json();
  return data.subfolder ? `${data.subfolder}/${data.name}` : data.name;
}

function offerInReplayNodes(name) {
  // Nodes already on the canvas list the files that existed when they were made: add the new one.
  for (const node of app.graph?._nodes ?? app.graph?.nodes ?? []) {
    if (!REPLAY_NODES.has(node.comfyClass ?? node.type)) continue;
    const widget = node.widgets?.find((w) => w.name === "file");
    if (widget && !widget.options.values.includes(name)) widget.options.values.push(name);
  }
}

function isRaiiaf(file) {
  return file.name.toLowerCase().endsWith(".raiiaf");
}

async function openDropped(file) {
  // The server reads the file with raiiaf_core (checksums and all) before anything is uploaded or loaded.
  const query = new URLSearchParams({ name: file.name });
  const response = await api.fetchApi(`${WORKFLOW_ROUTE}?${query}`, {
    method: "POST",
    body: file,
    headers: { "Content-Type": "application/octet-stream" },
  });
  let answer;
  try {
    answer = await response.json();
  } catch {
    throw new Error(`${file.name}: the server answered ${response.status} ${response.statusText}`);
  }
  if (!response.ok) throw new Error(answer.error ?? `${file.name}: ${response.status} ${response.statusText}`);
  const name = await uploadRaiiaf(file);
  offerInReplayNodes(name);
  const title = file.name.replace(/\.raiiaf$/i, "");
  const uploaded = `uploaded as ${name} for Raiiaf Load Replay.`;
  if (answer.workflow) {
    await app.loadGraphData(answer.workflow, true, true, title);
    notify("info", `Loaded the workflow of ${file.name}; ${uploaded}`);
  } else if (answer.prompt && app.loadApiJson) {
    app.loadApiJson(answer.prompt, title);
    notify("info", `${answer.message}: loaded that graph; ${uploaded}`);
  } else {
    notify("warn", `${answer.message}. Not loaded; ${uploaded}`);
  }
}

// The frontend's own drop handler (a bubbling listener on document) would call a .raiiaf a file without a
// workflow. It does not look at event.defaultPrevented (neither in frontend 1.27.10 nor in 1.35.9: it calls
// preventDefault itself), so marking the event is not enough: this listener runs first (capture phase on
// window) and stops the event, for .raiiaf files only.
window.addEventListener(
  "drop",
  (event) => {
    const file = [...(event.dataTransfer?.files ?? [])].find(isRaiiaf);
    if (!file) return;
    event.preventDefault();
    event.stopImmediatePropagation();
    openDropped(file).catch((error) => notify("error", error.message));
  },
  true,
);

function addUploadButton(node) {
  const fileWidget = node.widgets?.find((w) => w.name === "file");
  if (!fileWidget) return;
  const picker = document.createElement("input");
  picker.type = "file";
  picker.accept = ".raiiaf,.png"; // a PNG from `raiiaf export` or Raiiaf Save's PNG option holds a .raiiaf
  picker.style.display = "none";
  picker.onchange = async () => {
    if (!picker.files.length) return;
    try {
      const name = await uploadRaiiaf(picker.files[0]);
      offerInReplayNodes(name);
      fileWidget.value = name;
      fileWidget.callback?.(name);
      node.setDirtyCanvas?.(true, true);
    } catch (error) {
      notify("error", error.message);
    } finally {
      picker.value = "";
    }
  };
  document.body.append(picker);
  node.addWidget("button", "upload .raiiaf", null, () => picker.click(), { serialize: false });
  const onRemoved = node.onRemoved;
  node.onRemoved = function () {
    picker.remove();
    return onRemoved?.apply(this, arguments);
  };
}

function showReport(node, text) {
  let widget = node.widgets?.find((w) => w.name === "report");
  if (!widget) {
    widget = app.widgets.STRING(node, "report", ["STRING", { multiline: true }], app).widget;
    widget.serialize = false;
    if (widget.element) widget.element.readOnly = true;
    // A few lines of report; the rest of the node is left to the file's picture below it (Raiiaf Load Replay).
    widget.options.getMinHeight = () => 60;
    widget.options.getMaxHeight = () => 160;
  }
  widget.value = text;
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "raiiaf.nodes",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!REPLAY_NODES.has(nodeData.name)) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      addUploadButton(this);
      return result;
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      if (message?.[REPORT_KEY]) showReport(this, message[REPORT_KEY].join("\n"));
    };
  },
});
