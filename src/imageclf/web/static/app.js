// imageclf upload page: preview, drag-and-drop, paste, webcam capture, and a size/type
// check before sending. The form works without this file; it only makes it nicer.
"use strict";

(function () {
  document.documentElement.classList.add("js");

  function ready(fn) {
    if (document.readyState !== "loading") fn();
    else document.addEventListener("DOMContentLoaded", fn);
  }

  ready(function () {
    var form = document.getElementById("upload-form");
    if (!form) return;
    var input = document.getElementById("file");
    var zone = document.getElementById("dropzone");
    var preview = document.getElementById("preview");
    var nameLine = document.getElementById("file-name");
    var message = document.getElementById("client-error");
    var submit = document.getElementById("submit");
    var maxBytes = parseInt(form.dataset.maxBytes, 10) || 5 * 1024 * 1024;
    var maxMb = form.dataset.maxMb || "5";
    // The server derives these from its one list of accepted formats.
    var allowed = (form.dataset.allowed || "").split(",");
    var formatNames = form.dataset.formats || allowed.join(", ");
    var extensions = {};
    (form.dataset.extensions || "").split(",").forEach(function (pair) {
      var parts = pair.split(":");
      if (parts.length === 2) extensions[parts[0]] = parts[1];
    });
    var previewUrl = null;
    // Our own message ("Choose an image first") replaces the browser's bubble.
    input.required = false;

    function showError(text) {
      message.textContent = text;
      message.hidden = false;
    }

    function clearError() {
      message.textContent = "";
      message.hidden = true;
      var serverError = document.getElementById("server-error");
      if (serverError) serverError.hidden = true;
    }

    function formatOf(file) {
      var type = (file.type || "").toLowerCase();
      if (type.indexOf("image/") === 0) {
        var sub = type.slice(6).replace("x-ms-bmp", "bmp").replace("pjpeg", "jpeg");
        return sub;
      }
      var dot = file.name.lastIndexOf(".");
      return dot >= 0 ? extensions[file.name.slice(dot + 1).toLowerCase()] || "" : "";
    }

    function sizeText(bytes) {
      if (bytes < 1024 * 1024) return Math.max(1, Math.round(bytes / 1024)) + " KB";
      return (bytes / (1024 * 1024)).toFixed(1) + " MB";
    }

    function resetPreview() {
      if (previewUrl) URL.revokeObjectURL(previewUrl);
      previewUrl = null;
      preview.hidden = true;
      preview.removeAttribute("src");
      preview.classList.remove("pixelated");
      zone.classList.remove("has-preview");
      nameLine.textContent = "";
    }

    // Returns true when the file may be sent; otherwise explains why and clears the input.
    function check(file) {
      clearError();
      resetPreview();
      if (!file) return false;
      if (file.size > maxBytes) {
        showError("This file is " + sizeText(file.size) + ". The limit is " + maxMb +
                  " MB: please choose a smaller image.");
        input.value = "";
        return false;
      }
      if (file.size === 0) {
        showError("This file is empty.");
        input.value = "";
        return false;
      }
      if (allowed.indexOf(formatOf(file)) < 0) {
        showError("“" + file.name + "” is not an accepted image (" + formatNames + ").");
        input.value = "";
        return false;
      }
      previewUrl = URL.createObjectURL(file);
      preview.onload = function () {
        if (preview.naturalWidth <= 64 && preview.naturalHeight <= 64) {
          preview.classList.add("pixelated");
        }
      };
      preview.onerror = function () {
        resetPreview();
        nameLine.textContent = file.name + " · " + sizeText(file.size);
      };
      preview.src = previewUrl;
      preview.hidden = false;
      zone.classList.add("has-preview");
      nameLine.textContent = file.name + " · " + sizeText(file.size);
      return true;
    }

    function useFile(file) {
      if (!file) return;
      try {
        var transfer = new DataTransfer();
        transfer.items.add(file);
        input.files = transfer.files;
      } catch (err) {
        showError("Your browser cannot take this file here: use the file picker instead.");
        return;
      }
      check(file);
    }

    input.addEventListener("change", function () {
      check(input.files && input.files[0]);
    });

    ["dragenter", "dragover"].forEach(function (name) {
      zone.addEventListener(name, function (event) {
        event.preventDefault();
        zone.classList.add("dragover");
      });
    });
    ["dragleave", "drop"].forEach(function (name) {
      zone.addEventListener(name, function () {
        zone.classList.remove("dragover");
      });
    });
    zone.addEventListener("drop", function (event) {
      event.preventDefault();
      var files = event.dataTransfer && event.dataTransfer.files;
      if (files && files.length) useFile(files[0]);
    });

    document.addEventListener("paste", function (event) {
      var items = (event.clipboardData && event.clipboardData.items) || [];
      for (var i = 0; i < items.length; i++) {
        if (items[i].kind === "file") {
          event.preventDefault();
          var file = items[i].getAsFile();
          if (file && !file.name) {
            file = new File([file], "pasted." + (formatOf(file) || "png"), { type: file.type });
          }
          useFile(file);
          return;
        }
      }
    });

    // Webcam: shown only where the browser offers a camera (a secure context, an allowed
    // permission policy). The photo becomes the form's file, like a drop or a paste.
    var camera = document.getElementById("camera");
    var video = document.getElementById("camera-video");
    var openCamera = document.getElementById("camera-open");
    var stream = null;
    var policy = document.permissionsPolicy || document.featurePolicy;
    var cameraAllowed = !policy || !policy.allowsFeature || policy.allowsFeature("camera");
    if (camera && window.isSecureContext && navigator.mediaDevices &&
        navigator.mediaDevices.getUserMedia && cameraAllowed) {
      openCamera.hidden = false;
    }

    function stopCamera() {
      if (stream) stream.getTracks().forEach(function (track) { track.stop(); });
      stream = null;
      video.srcObject = null;
      camera.hidden = true;
      openCamera.hidden = false;
    }

    if (camera) {
      openCamera.addEventListener("click", function () {
        clearError();
        navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" }, audio: false })
          .then(function (opened) {
            stream = opened;
            video.srcObject = stream;
            camera.hidden = false;
            openCamera.hidden = true;
            return video.play();
          })
          .then(function () {
            document.getElementById("camera-capture").focus();
          })
          .catch(function (err) {
            stopCamera();
            showError(err && err.name === "NotAllowedError"
              ? "The browser did not allow the camera. Choose a file instead."
              : "No camera could be opened here. Choose a file instead.");
          });
      });
      document.getElementById("camera-cancel").addEventListener("click", function () {
        stopCamera();
        openCamera.focus();
      });
      document.getElementById("camera-capture").addEventListener("click", function () {
        if (!stream || !video.videoWidth) return;
        var canvas = document.createElement("canvas");
        canvas.width = video.videoWidth;
        canvas.height = video.videoHeight;
        canvas.getContext("2d").drawImage(video, 0, 0);
        canvas.toBlob(function (blob) {
          stopCamera();
          if (!blob) {
            showError("The photo could not be taken. Choose a file instead.");
            return;
          }
          useFile(new File([blob], "webcam.jpg", { type: "image/jpeg" }));
          submit.focus();
        }, "image/jpeg", 0.92);
      });
    }

    form.addEventListener("submit", function (event) {
      var file = input.files && input.files[0];
      if (!file) {
        event.preventDefault();
        showError("Choose an image first.");
        return;
      }
      if (!check(file)) {
        event.preventDefault();
        return;
      }
      submit.disabled = true;
      submit.classList.add("busy");
      submit.textContent = "Classifying…";
    });

    // Coming back with the browser's back button: the page may be restored as it was left.
    window.addEventListener("pageshow", function () {
      submit.disabled = false;
      submit.classList.remove("busy");
      submit.textContent = "Classify";
    });
  });
})();
