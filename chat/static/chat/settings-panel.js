// The conversation settings dialog: the system prompt and the generation settings. Which
// settings there are, their limits and where a slider rests while unset come from the server
// (the template renders one field per setting from chat/params.py): every input marked
// `data-setting` is one, a range input a slider, a number input a whole number.

import { conversations as api } from "./api.js";
import { $, announce } from "./dom.js";

/** Settings without the unset ones (null: a JSON merge patch removes them on the server). */
export function withoutNulls(settings) {
  return Object.fromEntries(Object.entries(settings || {}).filter(([, value]) => value !== null && value !== undefined));
}

/**
 * `current()` tells what the dialog edits: {id, conversation, draft} (draft: the settings chosen
 * before the conversation exists). `onSaved({id, fields, updated})` gets what was saved: to the
 * server when conversation `id` exists (`updated`: its answer), else (id null) for the draft.
 */
export class SettingsPanel {
  constructor({ current, onSaved }) {
    this.current = current;
    this.onSaved = onSaved;
    this.dialog = $("settings");
    this.form = $("settings-form");
    this.opener = $("open-settings");
    this.systemPrompt = $("system-prompt");
    this.error = $("settings-error");
    this.note = $("settings-note");
    this.fields = [...this.form.querySelectorAll("[data-setting]")];
    this.sliders = this.fields.filter((input) => input.type === "range");
    for (const input of this.sliders) {
      input.addEventListener("input", () => {
        input.dataset.unset = "false";
        this.showSliderValue(input);
      });
    }
    this.opener.addEventListener("click", () => {
      this.fill();
      this.dialog.showModal();
      this.systemPrompt.focus();
    });
    $("settings-close").addEventListener("click", () => this.dialog.close("cancel"));
    $("settings-cancel").addEventListener("click", () => this.dialog.close("cancel"));
    $("settings-reset").addEventListener("click", () => {
      this.systemPrompt.value = "";
      for (const input of this.fields) this.setField(input, null);
    });
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.save();
    });
    this.dialog.addEventListener("close", () => this.opener.focus());
  }

  get isOpen() {
    return this.dialog.open;
  }

  showSliderValue(input) {
    $(`${input.id}-out`).textContent = input.dataset.unset === "true" ? "default" : Number(input.value).toFixed(2);
  }

  /** Show `value` in a setting's field; null: unset (a slider rests at its resting value). */
  setField(input, value) {
    if (input.type !== "range") {
      input.value = value ?? "";
      return;
    }
    input.dataset.unset = value == null ? "true" : "false";
    input.value = value == null ? input.dataset.resting : value;
    this.showSliderValue(input);
  }

  fill() {
    const { id, conversation, draft } = this.current();
    const settings = conversation?.settings || draft.settings || {};
    this.systemPrompt.value = conversation ? conversation.system_prompt || "" : draft.system_prompt;
    for (const input of this.fields) this.setField(input, settings[input.dataset.setting]);
    this.error.textContent = "";
    this.note.textContent = conversation
      ? "Saved with this conversation and sent with each message."
      : "Used for the next conversation you start.";
    $("export").hidden = !id;
    if (id) {
      $("export-md").href = api.exportUrl(id, "md");
      $("export-json").href = api.exportUrl(id, "json");
    }
  }

  /** The form's fields; an unset setting is null. Throws when a number is not a whole one. */
  read() {
    const settings = {};
    for (const input of this.fields) {
      const name = input.dataset.setting;
      settings[name] = null;
      if (input.type === "range") {
        if (input.dataset.unset !== "true") settings[name] = Number(input.value);
        continue;
      }
      const text = input.value.trim();
      if (text) {
        const n = Number(text);
        if (!Number.isInteger(n) || n < 1) throw new Error(input.dataset.invalid);
        settings[name] = n;
      }
    }
    return { system_prompt: this.systemPrompt.value, settings };
  }

  async save() {
    let fields;
    try {
      fields = this.read();
    } catch (error) {
      this.error.textContent = error.message;
      return;
    }
    const { id } = this.current();
    let updated = null;
    if (id) {
      try {
        updated = await api.update(id, fields);
      } catch (error) {
        this.error.textContent = `Could not save: ${error.message}`;
        return;
      }
    }
    this.onSaved({ id, fields, updated });
    this.dialog.close("save");
    announce("Settings saved.");
  }
}
