// The page in English and Chinese: the browser's language first, or the one picked in #lang (kept in
// localStorage). The HTML holds the English; elements marked data-i18n (their text), data-i18n-placeholder,
// data-i18n-title or data-i18n-aria-label are translated from it, and code translates what it sets with t().

const LANG_KEY = "avatar-page-lang";
export const LANGUAGES = { en: "English", zh: "中文" };

const ZH = {
  "Live Avatar": "实时数字人",
  "Language": "语言",
  "disconnected": "未连接",
  "connecting": "连接中",
  "connected": "已连接",
  "failed": "失败",
  "idle": "空闲",
  "speaking": "说话中",
  "Press Connect to start": "点击「连接」开始",
  "Tap to unmute": "点击取消静音",
  "Connect": "连接",
  "Disconnect": "断开",
  "Microphone": "麦克风",
  "Send your microphone to the avatar (asked for on Connect)":
    "把麦克风的声音发给数字人（连接时请求权限）",
  "Voice": "音色",
  "Voice (TTS backend) for this session": "本次会话的音色（语音合成后端）",
  "Talk": "对话",
  "Type something for the avatar to say…": "输入要数字人说的话…",
  "Mode": "模式",
  "echo (say it)": "复述（照读）",
  "chat (ask the LLM)": "聊天（问大模型）",
  "interrupt": "打断当前",
  "Interrupt": "打断",
  "Send": "发送",
  "Audio file": "音频文件",
  "Play file": "播放文件",
  "Actions & recording": "动作与录制",
  "action": "动作",
  "Play": "播放",
  "Start recording": "开始录制",
  "Stop recording": "停止录制",
  "Download recording": "下载录像",
  "Stats": "统计",
  "video": "视频",
  "fps (decoded)": "帧率（解码）",
  "frames dropped": "丢帧",
  "latency (est.)": "延迟（估计）",
  "audio level": "音量",
  "reply latency": "回复延迟",
  "server": "服务器",
  "Transcript": "字幕记录",
  "Speech synthesis failed": "语音合成失败",
  "The language model failed": "大模型出错",
  "Rendering failed": "画面渲染出错",
  "Speech recognition failed": "语音识别失败",
  "The server refused the connection": "服务器拒绝了连接",
  "Connect failed": "连接失败",
  "?relay=1 needs a TURN server, and this server has none (start it with --turn)":
    "?relay=1 需要 TURN 服务器，而本服务器没有配置（启动时加 --turn）",
  "Avatar": "形象",
  "Avatar: chosen before connecting, or switched live": "形象：连接前选择，或在通话中切换",
  "frames": "帧",
};
const TABLES = { en: {}, zh: ZH };
const ATTRIBUTES = ["placeholder", "title", "aria-label"];

function preferred() {
  const saved = localStorage.getItem(LANG_KEY);
  if (saved in LANGUAGES) return saved;
  for (const tag of navigator.languages ?? [navigator.language]) {
    const base = String(tag).toLowerCase().split("-")[0];
    if (base in LANGUAGES) return base;
  }
  return "en";
}

let current = preferred();

export function t(english) {
  return TABLES[current][english] ?? english;
}

export function language() {
  return current;
}

// Translate every marked element; the English is taken from the element the first time.
function apply() {
  document.documentElement.lang = current === "zh" ? "zh-CN" : "en";
  for (const el of document.querySelectorAll("[data-i18n]")) {
    if (!el.dataset.i18n) el.dataset.i18n = el.textContent.trim().replace(/\s+/g, " ");
    el.textContent = t(el.dataset.i18n);
  }
  for (const attr of ATTRIBUTES) {
    const key = `data-i18n-${attr}`;
    for (const el of document.querySelectorAll(`[${key}]`)) {
      if (!el.getAttribute(key)) el.setAttribute(key, el.getAttribute(attr) ?? "");
      el.setAttribute(attr, t(el.getAttribute(key)));
    }
  }
  document.title = t("Live Avatar");
}

export function setLanguage(lang) {
  if (!(lang in LANGUAGES)) return;
  current = lang;
  localStorage.setItem(LANG_KEY, lang);
  apply();
  document.dispatchEvent(new CustomEvent("languagechange", { detail: lang }));
}

// The language picker (#lang), then the first translation.
{
  const picker = document.getElementById("lang");
  if (picker) {
    for (const [code, name] of Object.entries(LANGUAGES)) picker.add(new Option(name, code));
    picker.value = current;
    picker.addEventListener("change", () => setLanguage(picker.value));
  }
  apply();
}
