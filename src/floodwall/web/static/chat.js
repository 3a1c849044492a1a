// The chat page: sends the conversation to /app/chat and writes the streamed answer as it arrives.
"use strict";
(() => {
  const form = document.getElementById("composer");
  const prompt = document.getElementById("prompt");
  const model = document.getElementById("model");
  const conversation = document.getElementById("conversation");
  const status = document.getElementById("status");
  const send = document.getElementById("send");
  const stop = document.getElementById("stop");
  let messages = [];
  let controller = null;

  function bubble(role, text) {
    const el = document.createElement("div");
    el.className = "message " + role;
    el.textContent = text;
    conversation.appendChild(el);
    el.scrollIntoView({ block: "end" });
    return el;
  }

  function busy(on) {
    send.disabled = on;
    stop.hidden = !on;
    status.textContent = on ? "The model is answering…" : "";
  }

  async function errorText(response) {
    const retry = response.headers.get("Retry-After");
    try {
      const body = await response.json();
      const msg = (body.error && body.error.message) || response.statusText;
      return retry ? `${msg} (try again in ${retry} s)` : msg;
    } catch (_) {
      return `HTTP ${response.status}`;
    }
  }

  async function ask(text) {
    messages.push({ role: "user", content: text });
    bubble("user", text);
    const out = bubble("assistant", "");
    controller = new AbortController();
    busy(true);
    let answer = "";
    try {
      const response = await fetch("/app/chat", {
        method: "POST",
        headers: { "Content-Type": "application/json", "Accept": "text/event-stream" },
        body: JSON.stringify({ model: model.value, messages }),
        signal: controller.signal,
      });
      if (!response.ok) throw new Error(await errorText(response));
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const event = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
          if (!data || data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message || "The model failed.");
          const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
          if (delta && delta.content) {
            answer += delta.content;
            out.textContent = answer;
          }
        }
      }
      messages.push({ role: "assistant", content: answer });
    } catch (err) {
      if (err.name === "AbortError") {
        messages.push({ role: "assistant", content: answer });
        status.textContent = "Stopped.";
      } else {
        out.classList.add("failed");
        out.textContent = (answer ? answer + "\n\n" : "") + "⚠ " + err.message;
        messages.pop();
      }
    } finally {
      controller = null;
      busy(false);
      prompt.focus();
    }
  }

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const text = prompt.value.trim();
    if (!text || controller) return;
    prompt.value = "";
    ask(text);
  });
  prompt.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); form.requestSubmit(); }
  });
  stop.addEventListener("click", () => controller && controller.abort());
  document.getElementById("clear").addEventListener("click", () => {
    messages = []; conversation.textContent = ""; prompt.focus();
  });
})();
