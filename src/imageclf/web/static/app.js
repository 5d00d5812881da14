// imageclf upload page: preview, drag-and-drop (one picture or several), paste, webcam
// capture, and a size/type check before sending. The form works without this file; it only makes it nicer.
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

    var strip = document.getElementById("preview-strip");
    var maxFiles = parseInt(form.dataset.maxFiles, 10) || 1;
    var stripUrls = [];

    function resetPreview() {
      if (previewUrl) URL.revokeObjectURL(previewUrl);
      previewUrl = null;
      stripUrls.forEach(function (url) { URL.revokeObjectURL(url); });
      stripUrls = [];
      strip.textContent = "";
      strip.hidden = true;
      preview.hidden = true;
      preview.removeAttribute("src");
      preview.classList.remove("pixelated");
      zone.classList.remove("has-preview");
      nameLine.textContent = "";
    }

    function refuse(text) {
      showError(text);
      input.value = "";
      return false;
    }

    // Returns true when the files may be sent; otherwise explains why and clears the input.
    function check(files) {
      clearError();
      resetPreview();
      if (!files || !files.length) return false;
      if (files.length > maxFiles) {
        return refuse("You chose " + files.length + " pictures; at most " + maxFiles +
                      " can be classified at once.");
      }
      var total = 0;
      for (var i = 0; i < files.length; i++) {
        var file = files[i];
        total += file.size;
        if (file.size === 0) return refuse("“" + file.name + "” is empty.");
        if (allowed.indexOf(formatOf(file)) < 0) {
          return refuse("“" + file.name + "” is not an accepted image (" + formatNames + ").");
        }
      }
      if (total > maxBytes) {
        return refuse((files.length > 1 ? "These pictures are " : "This file is ") +
                      sizeText(total) + ". The limit is " + maxMb + " MB" +
                      (files.length > 1 ? " in all: choose fewer or smaller ones." :
                       ": please choose a smaller image."));
      }
      zone.classList.add("has-preview");
      if (files.length > 1) {
        for (var j = 0; j < files.length; j++) {
          var url = URL.createObjectURL(files[j]);
          stripUrls.push(url);
          var thumb = document.createElement("img");
          thumb.alt = files[j].name;
          thumb.src = url;
          strip.appendChild(thumb);
        }
        strip.hidden = false;
        nameLine.textContent = files.length + " pictures · " + sizeText(total);
        return true;
      }
      var single = files[0];
      previewUrl = URL.createObjectURL(single);
      preview.onload = function () {
        if (preview.naturalWidth <= 64 && preview.naturalHeight <= 64) {
          preview.classList.add("pixelated");
        }
      };
      preview.onerror = function () {
        preview.hidden = true;
        nameLine.textContent = single.name + " · " + sizeText(single.size);
      };
      preview.src = previewUrl;
      preview.hidden = false;
      nameLine.textContent = single.name + " · " + sizeText(single.size);
      return true;
    }

    function useFiles(files) {
      if (!files || !files.length) return;
      try {
        var transfer = new DataTransfer();
        for (var i = 0; i < files.length; i++) transfer.items.add(files[i]);
        input.files = transfer.files;
      } catch (err) {
        showError("Your browser cannot take these files here: use the file picker instead.");
        return;
      }
      check(input.files);
    }

    input.addEventListener("change", function () {
      check(input.files);
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
      if (files && files.length) useFiles(files);
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
          useFiles([file]);
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
          useFiles([new File([blob], "webcam.jpg", { type: "image/jpeg" })]);
          submit.focus();
        }, "image/jpeg", 0.92);
      });
    }

    form.addEventListener("submit", function (event) {
      if (!input.files || !input.files.length) {
        event.preventDefault();
        showError("Choose an image first.");
        return;
      }
      if (!check(input.files)) {
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
