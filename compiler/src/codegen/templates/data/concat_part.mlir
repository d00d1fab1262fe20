        %lo{{k}} = arith.constant {{lo}} : index
        %hi{{k}} = arith.constant {{hi}} : index
        %ge{{k}} = arith.cmpi uge, {{ca}}, %lo{{k}} : index
        %lt{{k}} = arith.cmpi ult, {{ca}}, %hi{{k}} : index
        %in{{k}} = arith.andi %ge{{k}}, %lt{{k}} : i1
        %la{{k}} = arith.subi {{ca}}, %lo{{k}} : index
        %zi{{k}} = arith.constant 0 : index
        %ix{{k}} = arith.select %in{{k}}, %la{{k}}, %zi{{k}} : index
