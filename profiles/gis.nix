# GIS staff: QGIS with GRASS, GDAL tools, PostGIS client, OpenStreetMap editing.
{ pkgs, ... }:
{
  environment.systemPackages = with pkgs; [
    qgis-ltr
    grass
    gdal
    proj
    postgresql
    josm
  ];

  # Raster processing wants many open files.
  security.pam.loginLimits = [
    {
      domain = "@users";
      type = "soft";
      item = "nofile";
      value = "65536";
    }
  ];
}
