# Media creation: video, photo, audio and vector tools; low-latency audio.
{ pkgs, ... }:
{
  environment.systemPackages = with pkgs; [
    kdePackages.kdenlive
    blender
    gimp
    inkscape
    darktable
    audacity
    obs-studio
    ffmpeg
  ];

  hardware.graphics.enable = true;
  security.rtkit.enable = true;
  services.pipewire.extraConfig.pipewire."92-low-latency" = {
    "context.properties" = {
      "default.clock.rate" = 48000;
      "default.clock.quantum" = 256;
      "default.clock.min-quantum" = 64;
    };
  };
}
