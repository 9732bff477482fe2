# Administration staff: documents, mail, PDFs, the accounting web apps in Firefox.
{ pkgs, ... }:
{
  environment.systemPackages = with pkgs; [
    libreoffice
    hunspellDicts.en_GB-ise
    hunspellDicts.de_DE
    thunderbird
    kdePackages.okular
    pdfarranger
  ];
}
