// Kiosk page: touch or hold-to-talk, big text, spoken replies, and a screen that clears itself
// after inactivity (a shared device must not show one resident's details to the next).
"use strict";

const IDLE_SECONDS = 90;      // no touch for this long → "您还在吗？"
const GRACE_SECONDS = 30;     // then the screen clears, unless "继续" is pressed
const DIGIT_SLOTS = new Set(["id_number", "phone", "parent_phone", "progress_key", "quantity"]);

const $ = (id) => document.getElementById(id);
let session = newSession();
let lastAudio = [];           // the last reply's sentences, for 重听
let speaking = [];            // sentences still to play
let idleTimer = null;
let graceTimer = null;

function newSession() {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function post(path, body, contentType = "application/json") {
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": contentType },
    body: contentType === "application/json" ? JSON.stringify(body) : body,
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw Object.assign(new Error(data.detail || "请求失败"), { data });
  return data;
}

function show(data) {
  const replies = $("replies");
  replies.replaceChildren();
  for (const reply of data.replies || []) {
    const p = document.createElement("p");
    p.className = "reply";
    p.textContent = reply.text;
    replies.append(p);
  }
  const heard = $("heard");
  heard.hidden = !data.heard;
  heard.textContent = data.heard || "";
  const choices = $("choices");
  choices.replaceChildren();
  const buttons = (data.replies || []).flatMap((r) => r.buttons || []);
  for (const b of buttons) choices.append(taskButton(b.title, b.payload));
  // Every reply is a new question (or the same one asked again): what was typed for the last one
  // must not stay in the display, or the phone number is typed after the ID number.
  clearKeyed();
  showKeypad(DIGIT_SLOTS.has(data.expects));
  const urls = data.audio_urls || (data.audio_url ? [data.audio_url] : []);
  if (urls.length) play(urls);
  if (data.end_session) setTimeout(clearScreen, 8000);
}

function taskButton(title, payload) {
  const button = document.createElement("button");
  button.className = "big";
  button.textContent = title;
  button.dataset.payload = payload;
  return button;
}

// A reply is played sentence by sentence: the server makes the later ones while the first plays.
function play(urls) {
  lastAudio = urls;
  speaking = urls.slice();
  playNext();
}

function playNext() {
  const url = speaking.shift();
  if (!url) return;
  const audio = $("voice");
  audio.src = url;
  audio.play().catch(() => {}); // autoplay may be blocked until the first touch; text is shown anyway
}

function stopSpeaking() {
  speaking = [];
  const audio = $("voice");
  audio.pause();
  audio.removeAttribute("src");
  audio.load();
}

async function say(text) {
  stopSpeaking(); // a new turn: the last reply is not wanted any more
  try {
    show(await post("/kiosk/api/turn", { session, text }));
  } catch (error) {
    show({ replies: [{ text: (error.data && error.data.detail) || "系统忙，请稍后再试，或按“一键呼叫”。" }] });
  }
}

// --- keypad for ID and phone numbers -------------------------------------------------------------
// While it is open the common-task buttons step aside (body.keypad-open), so the whole keypad fits
// on the screen above the bottom bar, in landscape (1280×900) and portrait (800×1280) alike.
function showKeypad(visible) {
  $("keypad").hidden = !visible;
  document.body.classList.toggle("keypad-open", visible);
  if (!visible) clearKeyed();
}

function clearKeyed() {
  $("keyed").textContent = "";
}

// Laid out four across: 1 2 3 删除 / 4 5 6 清空 / 7 8 9 X / 0 确定.
const KEYS = [
  ["1"], ["2"], ["3"], ["删除", "删除一位", "edit"],
  ["4"], ["5"], ["6"], ["清空", "全部清空", "edit"],
  ["7"], ["8"], ["9"], ["X", "字母X（身份证最后一位）"],
  ["0", "", "wide"], ["确定", "输入好了，确定", "done"],
];

function buildKeypad() {
  const keys = document.querySelector("#keypad .keys");
  for (const [label, spoken, kind] of KEYS) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = kind === "done" ? "big key done" : `big secondary key ${kind || "digit"}`;
    button.textContent = label;
    if (spoken) button.setAttribute("aria-label", spoken);
    button.addEventListener("click", () => pressKey(label));
    keys.append(button);
  }
}

function pressKey(label) {
  const out = $("keyed");
  if (label === "删除") out.textContent = out.textContent.slice(0, -1);
  else if (label === "清空") clearKeyed();
  else if (label === "确定") { const v = out.textContent; if (v) say(v); }
  else if (out.textContent.length < 20) out.textContent += label;
}

// --- hold to talk: record 16 kHz mono WAV in the page, send it to the server's recogniser -------
let recorder = null;

async function startTalking() {
  stopSpeaking(); // the microphone must not hear the kiosk's own voice
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: true } });
    const context = new AudioContext();
    const source = context.createMediaStreamSource(stream);
    const node = context.createScriptProcessor(4096, 1, 1);
    const chunks = [];
    node.onaudioprocess = (event) => chunks.push(new Float32Array(event.inputBuffer.getChannelData(0)));
    source.connect(node);
    node.connect(context.destination);
    recorder = { stream, context, node, source, chunks, started: performance.now() };
    $("talk").classList.add("recording");
    $("talk").textContent = "正在听，松开发送";
  } catch (error) {
    show({ replies: [{ text: "话筒用不了。请按屏幕上的按钮办理，或按“一键呼叫”。" }] });
  }
}

async function stopTalking() {
  if (!recorder) return;
  const { stream, context, node, source, chunks } = recorder;
  recorder = null;
  source.disconnect();
  node.disconnect();
  stream.getTracks().forEach((t) => t.stop());
  $("talk").classList.remove("recording");
  $("talk").textContent = "按住说话";
  const wav = encodeWav(downsample(concat(chunks), context.sampleRate, 16000), 16000);
  await context.close();
  $("replies").replaceChildren(Object.assign(document.createElement("p"), { className: "reply", textContent: "正在听您说的话……" }));
  try {
    show(await post(`/kiosk/api/speech?session=${session}`, wav, "audio/wav"));
  } catch (error) {
    show({ replies: [{ text: (error.data && error.data.detail) || "没听清，请再说一次，或按按钮办理。" }] });
  }
}

function concat(chunks) {
  const out = new Float32Array(chunks.reduce((n, c) => n + c.length, 0));
  let offset = 0;
  for (const c of chunks) { out.set(c, offset); offset += c.length; }
  return out;
}

function downsample(samples, from, to) {
  if (from === to) return samples;
  const ratio = from / to;
  const out = new Float32Array(Math.floor(samples.length / ratio));
  for (let i = 0; i < out.length; i++) {
    const start = Math.floor(i * ratio), end = Math.min(samples.length, Math.floor((i + 1) * ratio));
    let sum = 0;
    for (let j = start; j < end; j++) sum += samples[j];
    out[i] = sum / Math.max(1, end - start);
  }
  return out;
}

function encodeWav(samples, rate) {
  const buffer = new ArrayBuffer(44 + samples.length * 2);
  const view = new DataView(buffer);
  const text = (offset, s) => { for (let i = 0; i < s.length; i++) view.setUint8(offset + i, s.charCodeAt(i)); };
  text(0, "RIFF"); view.setUint32(4, 36 + samples.length * 2, true); text(8, "WAVE");
  text(12, "fmt "); view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, rate, true); view.setUint32(28, rate * 2, true); view.setUint16(32, 2, true); view.setUint16(34, 16, true);
  text(36, "data"); view.setUint32(40, samples.length * 2, true);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    view.setInt16(44 + i * 2, s < 0 ? s * 0x8000 : s * 0x7fff, true);
  }
  return new Blob([view], { type: "audio/wav" });
}

// --- inactivity: ask, then clear -------------------------------------------------------------------
function touched() {
  clearTimeout(idleTimer);
  idleTimer = setTimeout(askStillThere, IDLE_SECONDS * 1000);
}

function askStillThere() {
  let left = GRACE_SECONDS;
  $("countdown").textContent = left;
  $("still-there").hidden = false;
  $("keep").focus();
  graceTimer = setInterval(() => {
    left -= 1;
    $("countdown").textContent = left;
    if (left <= 0) clearScreen();
  }, 1000);
}

function keepGoing() {
  clearInterval(graceTimer);
  $("still-there").hidden = true;
  touched();
}

function clearScreen() {
  clearInterval(graceTimer);
  $("still-there").hidden = true;
  post("/kiosk/api/reset", { session }).catch(() => {});
  session = newSession();
  stopSpeaking();
  lastAudio = [];
  show({ replies: [{ text: "您好！请按下面的大按钮，或者按住“按住说话”说出您要办的事。" }] });
  touched();
}

// --- wiring ---------------------------------------------------------------------------------------
document.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-payload]");
  if (button) say(button.dataset.payload);
});
["pointerdown", "keydown"].forEach((type) => document.addEventListener(type, touched, { passive: true }));
$("talk").addEventListener("pointerdown", (event) => { event.preventDefault(); startTalking(); });
["pointerup", "pointerleave", "pointercancel"].forEach((type) => $("talk").addEventListener(type, stopTalking));
$("replay").addEventListener("click", () => (lastAudio.length ? play(lastAudio) : say("/repeat")));
$("voice").addEventListener("ended", playNext);
$("voice").addEventListener("error", playNext); // a sentence that could not be made: go on with the next
$("restart").addEventListener("click", clearScreen);
$("keep").addEventListener("click", keepGoing);
buildKeypad();
touched();
