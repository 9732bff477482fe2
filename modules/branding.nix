# Riverbend Planning's look and contact details on every machine.
{ config, lib, ... }:
let
  cfg = config.fleet.branding;
in
{
  options.fleet.branding = {
    organisation = lib.mkOption {
      type = lib.types.str;
      default = "Riverbend Planning";
      description = "Organisation name shown at login and in the terminal greeting.";
    };
    support = lib.mkOption {
      type = lib.types.str;
      default = "IT service desk: it@example.org, extension 4357";
      description = "Where staff get help.";
    };
    intranet = lib.mkOption {
      type = lib.types.str;
      default = "https://intranet.example.org";
      description = "Browser home page.";
    };
  };

  config = {
    services.getty.greetingLine = ''${cfg.organisation}: \n (\l). ${cfg.support}.'';
    users.motd = ''
      ${cfg.organisation}: ${config.networking.hostName}
      This machine is managed from the fleet repository; local changes are overwritten.
      ${cfg.support}
    '';
    environment.etc."fleet/support.txt".text = ''
      ${cfg.organisation}
      ${cfg.support}
      Host: ${config.networking.hostName}
    '';
    programs.firefox.policies = {
      Homepage = {
        URL = cfg.intranet;
        StartPage = "homepage";
      };
      DisableTelemetry = true;
      OfferToSaveLogins = false; # staff use the password manager
    };
  };
}
