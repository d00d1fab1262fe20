          %o_{{u}} = arith.constant {{offset}} : index
          %sb_{{u}} = arith.addi {{base}}, %o_{{u}} : index
          %s_{{u}} = arith.addi %sb_{{u}}, %tid : index
          %in_{{u}} = arith.cmpi ult, %s_{{u}}, %cS : index
          %sr_{{u}} = arith.minui %s_{{u}}, %cS1 : index
{{slot}}
