// The softphone's keypad with a script: keys go by fetch (same origin, the
// page's CSRF token in the form) and the transcript grows in place. Without
// this script every button is a plain form post and the page comes back.
(function () {
  "use strict";
  var phone = document.getElementById("softphone");
  if (!phone || !window.fetch || !window.FormData) { return; }
  var keysForm = document.getElementById("softphone-keys");
  var entry = document.getElementById("softphone-entry");
  var waitsLine = document.getElementById("softphone-waits");
  var transcript = document.getElementById("softphone-transcript");
  var busy = false;

  function waiting(waits, secret) {
    phone.dataset.waits = waits || "";
    waitsLine.textContent = waits === "one" ? phone.dataset.waitsOne
      : waits === "digits" ? phone.dataset.waitsDigits : phone.dataset.noCall;
    entry.type = secret ? "password" : "text";
  }

  function addLine(line) {
    var item = document.createElement("li");
    item.className = "line-" + line.who;
    if (line.lang) { item.lang = line.lang; }
    var label = line.who === "ivrs" ? phone.dataset.said : line.who === "you" ? phone.dataset.you : "";
    if (label) {
      var who = document.createElement("span");
      who.className = "who";
      who.textContent = label;
      item.appendChild(who);
      item.appendChild(document.createTextNode(" "));
    }
    item.appendChild(document.createTextNode(line.text));
    transcript.appendChild(item);
  }

  function send(form, extra) {
    if (busy) { return; }
    busy = true;
    var data = new FormData(form);
    Object.keys(extra || {}).forEach(function (name) { data.set(name, extra[name]); });
    fetch(form.action, {method: "POST", body: data, credentials: "same-origin",
                        headers: {"Accept": "application/json"}})
      .then(function (answer) { return answer.json(); })
      .then(function (answer) {
        if (answer.reset) { transcript.textContent = ""; }
        answer.lines.forEach(addLine);
        waiting(answer.waits, answer.secret);
        entry.value = "";
        entry.focus();
      })
      .catch(function () { addLine({who: "note", text: phone.dataset.failed}); })
      .then(function () { busy = false; });
  }

  // A key of the keypad: a menu takes it at once; a number is typed until "#".
  function press(key) {
    if (phone.dataset.waits === "one") {
      send(keysForm, {keys: key});
    } else if (key === "#") {
      send(keysForm, {keys: entry.value + "#"});
    } else {
      entry.value += key;
    }
  }

  Array.prototype.forEach.call(document.querySelectorAll("form[data-softphone]"), function (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var button = event.submitter;
      if (form === keysForm && button && button.name === "key") {
        press(button.value);
      } else if (form === keysForm && button && button.name === "silence") {
        send(form, {keys: "", silence: "1"});
      } else {
        send(form);
      }
    });
  });

  // The computer's keyboard is a keypad too, outside the text fields.
  document.addEventListener("keydown", function (event) {
    var target = event.target;
    if (/^(INPUT|SELECT|TEXTAREA|BUTTON)$/.test(target.tagName) && target.type !== "submit") { return; }
    if (/^[0-9*#]$/.test(event.key) && phone.dataset.waits) {
      event.preventDefault();
      press(event.key);
    }
  });
})();
