// Playground page: stream ad copy from POST /generate, show the served model and the jobs.
// EventSource cannot POST, so the stream is read with fetch and parsed as server-sent events here.
"use strict";

const PRESET_TAGS = [
  "类型#裙", "颜色#粉红色", "裙长#连衣裙", "图案#条纹", "风格#简约", "材质#棉",
  "类型#上衣", "衣样式#T恤", "颜色#白色", "衣领型#圆领", "类型#裤", "裤长#九分裤",
];
const JOBS_REFRESH_MS = 5000;
const MODEL_REFRESH_MS = 10000;
const LANG_KEY = "adgen.lang";
const API_KEY_KEY = "adgen.apiKey";

const MESSAGES = {
  zh: {
    title: "广告文案生成",
    subtitle: "根据商品标签，流式生成一段广告文案",
    servedModel: "服务模型：",
    settings: "设置",
    apiKey: "API 密钥",
    apiKeyPlaceholder: "服务器设置了 API_KEY 时填写",
    apiKeyHint: "只保存在本浏览器中。",
    tagsHeading: "商品标签",
    tagsLabel: "输入标签，格式为 键#值，用 * 分隔",
    tagsPlaceholder: "类型#裙*颜色#粉红色*裙长#连衣裙",
    presetsLabel: "常用标签（点击添加或移除）",
    options: "生成参数",
    maxNewTokens: "最大生成长度",
    temperature: "温度",
    seed: "随机种子",
    seedPlaceholder: "留空则随机",
    doSample: "采样",
    generate: "生成",
    generating: "生成中…",
    stop: "停止",
    outputHeading: "广告文案",
    copy: "复制",
    copied: "已复制",
    outputPlaceholder: "选择标签后点击“生成”，文案会在这里逐字出现。",
    jobsHeading: "训练与评测任务",
    jobsRefresh: "每 5 秒刷新",
    jobId: "任务",
    jobType: "类型",
    jobStatus: "状态",
    jobProgress: "进度",
    apiDocs: "API 文档",
    noTags: "请先输入或选择商品标签。",
    waiting: "等待第一个字…",
    streaming: "正在生成…",
    done: (s) => `完成 · ${s.tokens} 个 token · ${s.seconds} 秒 · 结束原因：${s.reason}`,
    stopped: "已停止。",
    failed: (m) => `生成失败：${m}`,
    modelLoading: "加载中",
    modelNone: "未加载",
    jobsUnavailable: "任务列表不可用（此服务器未提供 /v1/jobs）。",
    jobsUnauthorized: "任务列表需要 API 密钥，请在“设置”中填写。",
    jobsEmpty: "暂无任务。",
    jobsError: "暂时无法读取任务列表。",
    status: { queued: "排队中", started: "运行中", finished: "已完成", failed: "失败", canceled: "已取消" },
    type: { train: "训练", eval: "评测" },
  },
  en: {
    title: "Ad Copy Generator",
    subtitle: "Stream ad copy from product tags",
    servedModel: "Model:",
    settings: "Settings",
    apiKey: "API key",
    apiKeyPlaceholder: "Needed when the server sets API_KEY",
    apiKeyHint: "Stored in this browser only.",
    tagsHeading: "Product tags",
    tagsLabel: "Enter tags as key#value, separated by *",
    tagsPlaceholder: "类型#裙*颜色#粉红色*裙长#连衣裙",
    presetsLabel: "Common tags (click to add or remove)",
    options: "Generation settings",
    maxNewTokens: "Max new tokens",
    temperature: "Temperature",
    seed: "Seed",
    seedPlaceholder: "Empty for random",
    doSample: "Sample",
    generate: "Generate",
    generating: "Generating…",
    stop: "Stop",
    outputHeading: "Ad copy",
    copy: "Copy",
    copied: "Copied",
    outputPlaceholder: "Pick some tags and press Generate; the copy appears here as it is written.",
    jobsHeading: "Training and evaluation jobs",
    jobsRefresh: "Refreshed every 5 s",
    jobId: "Job",
    jobType: "Type",
    jobStatus: "Status",
    jobProgress: "Progress",
    apiDocs: "API docs",
    noTags: "Enter or pick some product tags first.",
    waiting: "Waiting for the first characters…",
    streaming: "Writing…",
    done: (s) => `Done · ${s.tokens} tokens · ${s.seconds} s · finish reason: ${s.reason}`,
    stopped: "Stopped.",
    failed: (m) => `Generation failed: ${m}`,
    modelLoading: "loading",
    modelNone: "none loaded",
    jobsUnavailable: "Jobs are not available (this server has no /v1/jobs).",
    jobsUnauthorized: "The job list needs an API key; enter it under Settings.",
    jobsEmpty: "No jobs yet.",
    jobsError: "The job list cannot be read right now.",
    status: { queued: "queued", started: "running", finished: "finished", failed: "failed", canceled: "canceled" },
    type: { train: "train", eval: "eval" },
  },
};

const $ = (id) => document.getElementById(id);
let lang = localStorage.getItem(LANG_KEY) === "en" ? "en" : "zh";
let controller = null;
let lastStatus = null; // Re-rendered when the language changes.
let lastJobs = null;

function t(key) {
  return MESSAGES[lang][key];
}

function applyLanguage() {
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  document.title = lang === "zh" ? "adgen 广告文案生成" : "adgen Ad Copy Generator";
  for (const element of document.querySelectorAll("[data-i18n]")) {
    element.textContent = t(element.dataset.i18n);
  }
  for (const element of document.querySelectorAll("[data-i18n-placeholder]")) {
    element.placeholder = t(element.dataset.i18nPlaceholder);
  }
  const toggle = $("lang-toggle");
  toggle.textContent = lang === "zh" ? "English" : "中文";
  toggle.lang = lang === "zh" ? "en" : "zh-CN";
  if (controller) $("generate-button").textContent = t("generating");
  if (lastStatus) showStatus(lastStatus);
  if (lastJobs) renderJobs(lastJobs);
}

function authHeaders() {
  const key = localStorage.getItem(API_KEY_KEY);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// ---- Tags ----

function currentTags() {
  return $("tags-input").value.split("*").map((tag) => tag.trim()).filter(Boolean);
}

function renderChips() {
  const selected = new Set(currentTags());
  const container = $("preset-chips");
  container.replaceChildren();
  for (const tag of PRESET_TAGS) {
    const chip = document.createElement("button");
    chip.type = "button";
    chip.className = selected.has(tag) ? "chip selected" : "chip";
    chip.dataset.tag = tag;
    chip.textContent = tag;
    chip.addEventListener("click", () => toggleTag(tag));
    container.append(chip);
  }
}

function toggleTag(tag) {
  const tags = currentTags();
  const index = tags.indexOf(tag);
  if (index >= 0) tags.splice(index, 1);
  else tags.push(tag);
  $("tags-input").value = tags.join("*");
  renderChips();
}

// ---- Streaming ----

// Parse server-sent events from a fetch body; calls onEvent(name, data) per event, skips comments.
async function readEvents(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") name = text;
        else if (field === "data") data.push(text);
      }
      if (data.length) onEvent(name, data.join("\n"));
    }
  }
}

function describeError(status, body) {
  if (body && Array.isArray(body.detail)) {
    return body.detail.map((item) => `${(item.loc || []).slice(1).join(".")}: ${item.msg}`).join("; ");
  }
  if (body && typeof body.detail === "string") return body.detail;
  return `HTTP ${status}`;
}

function showStatus(status) {
  lastStatus = status;
  const line = $("status");
  if (status.kind === "done") line.textContent = t("done")(status);
  else if (status.kind === "failed") line.textContent = t("failed")(status.message);
  else line.textContent = t(status.kind);
}

function setBusy(busy) {
  $("generate-button").disabled = busy;
  $("generate-button").textContent = busy ? t("generating") : t("generate");
  $("stop-button").disabled = !busy;
}

function requestBody() {
  const body = {
    content: currentTags().join("*"),
    max_new_tokens: Number($("max-new-tokens").value) || 256,
    temperature: Number($("temperature").value) || 0.95,
    top_p: Number($("top-p").value) || 0.7,
    do_sample: $("do-sample").checked,
    stream: true,
  };
  const seed = $("seed").value.trim();
  if (seed !== "") body.seed = Number(seed);
  return body;
}

async function generate() {
  const output = $("output");
  if (!currentTags().length) {
    showStatus({ kind: "noTags" });
    return;
  }
  controller = new AbortController();
  setBusy(true);
  output.textContent = "";
  output.dataset.state = "streaming";
  $("copy-button").disabled = true;
  showStatus({ kind: "waiting" });
  const started = performance.now();
  let finished = false;
  try {
    const response = await fetch("/generate", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream", ...authHeaders() },
      body: JSON.stringify(requestBody()),
      signal: controller.signal,
    });
    if (!response.ok) {
      const body = await response.json().catch(() => null);
      throw new Error(describeError(response.status, body));
    }
    await readEvents(response.body, (name, data) => {
      const payload = JSON.parse(data);
      if (name === "token") {
        if (!output.textContent) showStatus({ kind: "streaming" });
        output.append(payload.text);
      } else if (name === "done") {
        finished = true;
        output.textContent = payload.text;
        output.dataset.state = "done";
        const seconds = ((performance.now() - started) / 1000).toFixed(1);
        showStatus({ kind: "done", tokens: payload.usage.completion_tokens, seconds, reason: payload.finish_reason });
      } else if (name === "error") {
        finished = true;
        output.dataset.state = "error";
        showStatus({ kind: "failed", message: payload.message });
      }
    });
    if (!finished) throw new Error("the stream ended early");
  } catch (error) {
    if (error.name === "AbortError") {
      output.dataset.state = "stopped";
      showStatus({ kind: "stopped" });
    } else {
      output.dataset.state = "error";
      showStatus({ kind: "failed", message: error.message });
    }
  } finally {
    controller = null;
    setBusy(false);
    $("copy-button").disabled = !output.textContent;
  }
}

// ---- Served model and jobs ----

async function refreshModel() {
  const dot = $("model-dot");
  const name = $("model-name");
  try {
    const response = await fetch("/v1/models", { headers: authHeaders() });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const models = (await response.json()).data || [];
    const serving = models.find((model) => model.status === "serving");
    const loading = models.find((model) => model.status === "loading");
    if (serving) {
      dot.className = "dot ready";
      name.textContent = serving.id;
      $("model-badge").title = serving.path || "";
    } else if (loading) {
      dot.className = "dot loading";
      name.textContent = `${loading.id} (${t("modelLoading")})`;
    } else {
      dot.className = "dot down";
      name.textContent = t("modelNone");
    }
  } catch (error) {
    dot.className = "dot down";
    name.textContent = "—";
  }
}

function progressOf(job) {
  const p = job.progress || {};
  if (p.total_steps) return { done: p.step || 0, total: p.total_steps };
  if (p.total_samples) return { done: p.samples_done || 0, total: p.total_samples };
  if (job.status === "finished") return { done: 1, total: 1 };
  return null;
}

function renderJobs(state) {
  lastJobs = state;
  const note = $("jobs-note");
  const table = $("jobs-table");
  if (state.note) {
    note.textContent = t(state.note);
    note.hidden = false;
    table.hidden = true;
    return;
  }
  note.hidden = true;
  table.hidden = false;
  $("jobs-body").replaceChildren(...state.jobs.map(jobRow));
  if (!state.jobs.length) {
    note.textContent = t("jobsEmpty");
    note.hidden = false;
    table.hidden = true;
  }
}

function jobRow(job) {
  const id = document.createElement("td");
  const code = document.createElement("code");
  code.textContent = job.id.length > 12 ? `${job.id.slice(0, 12)}…` : job.id;
  code.title = job.id;
  id.append(code);

  const type = document.createElement("td");
  type.textContent = t("type")[job.type] || job.type;

  const status = document.createElement("td");
  const badge = document.createElement("span");
  badge.className = `badge ${job.status}`;
  badge.textContent = t("status")[job.status] || job.status;
  status.append(badge);

  const row = document.createElement("tr");
  row.append(id, type, status, progressCell(progressOf(job)));
  return row;
}

function progressCell(fraction) {
  const cell = document.createElement("td");
  if (!fraction) {
    cell.textContent = "—";
    return cell;
  }
  const percent = Math.min(100, Math.round((100 * fraction.done) / Math.max(fraction.total, 1)));
  const fill = document.createElement("span");
  fill.style.width = `${percent}%`;
  const bar = document.createElement("div");
  bar.className = "bar";
  bar.append(fill);
  const label = document.createElement("span");
  label.textContent = `${percent}%`;
  const wrapper = document.createElement("div");
  wrapper.className = "progress";
  wrapper.append(bar, label);
  cell.append(wrapper);
  return cell;
}

async function refreshJobs() {
  try {
    const response = await fetch("/v1/jobs", { headers: authHeaders() });
    if (response.status === 404) return renderJobs({ note: "jobsUnavailable" });
    if (response.status === 401) return renderJobs({ note: "jobsUnauthorized" });
    if (!response.ok) return renderJobs({ note: "jobsError" });
    const body = await response.json();
    renderJobs({ jobs: Array.isArray(body) ? body : body.jobs || [] });
  } catch (error) {
    renderJobs({ note: "jobsError" });
  }
}

// ---- Wiring ----

function init() {
  $("lang-toggle").addEventListener("click", () => {
    lang = lang === "zh" ? "en" : "zh";
    localStorage.setItem(LANG_KEY, lang);
    applyLanguage();
  });
  $("settings-toggle").addEventListener("click", () => {
    $("settings-panel").hidden = !$("settings-panel").hidden;
  });

  const keyInput = $("api-key");
  keyInput.value = localStorage.getItem(API_KEY_KEY) || "";
  keyInput.addEventListener("change", () => {
    const key = keyInput.value.trim();
    if (key) localStorage.setItem(API_KEY_KEY, key);
    else localStorage.removeItem(API_KEY_KEY);
    refreshModel();
    refreshJobs();
  });

  $("tags-input").addEventListener("input", renderChips);
  $("generate-button").addEventListener("click", generate);
  $("stop-button").addEventListener("click", () => controller && controller.abort());
  $("copy-button").addEventListener("click", async () => {
    await navigator.clipboard.writeText($("output").textContent);
    $("copy-button").textContent = t("copied");
    setTimeout(() => { $("copy-button").textContent = t("copy"); }, 1500);
  });

  renderChips();
  applyLanguage();
  refreshModel();
  refreshJobs();
  setInterval(refreshModel, MODEL_REFRESH_MS);
  setInterval(refreshJobs, JOBS_REFRESH_MS);
}

init();
