// raiiaf nodes in the ComfyUI frontend: an upload button for .raiiaf files on the replay nodes (the image
// upload widget only takes images), and a text box showing the replay report (drift, bit-identical check).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const REPLAY_NODES = new Set(["RaiiafLoad", "RaiiafResample"]);
const REPORT_KEY = "raiiaf_report";

async function uploadRaiiaf(file) {
  // The same endpoint LoadImage's upload uses; it stores any file in the input folder.
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

function addUploadButton(node) {
  const fileWidget = node.widgets?.find((w) => w.name === "file");
  if (!fileWidget) return;
  const picker = document.createElement("input");
  picker.type = "file";
  picker.accept = ".raiiaf";
  picker.style.display = "none";
  picker.onchange = async () => {
    if (!picker.files.length) return;
    try {
      const name = await uploadRaiiaf(picker.files[0]);
      if (!fileWidget.options.values.includes(name)) fileWidget.options.values.push(name);
      fileWidget.value = name;
      fileWidget.callback?.(name);
      node.setDirtyCanvas?.(true, true);
    } catch (error) {
      alert(error.message);
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
